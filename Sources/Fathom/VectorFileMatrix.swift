import FathomCore
import FathomMath
import FathomStorage

extension Matrix {
    /// Reads a whole (small) vector file as floats: a query set, a training-query sample.
    /// Any format and element type ``VectorFileReader`` reads; `maxRows` keeps the first rows.
    ///
    /// Thread safety: reads the file with its own reader; callable from any thread.
    /// - Throws: `FathomError` (`fileNotFound`, `malformedFile`, `io`, ...) naming the file.
    public static func load(vectorFile path: String, maxRows: Int? = nil) throws -> Matrix {
        let r = try VectorFileReader(path: path)
        let rows = min(r.count, maxRows ?? r.count)
        let m = Matrix(rows: rows, cols: r.dimension)
        var got = 0
        while got < rows {
            let k = try r.readFloats(maxRows: rows - got, into: m.row(got))
            if k == 0 { break }
            got += k
        }
        guard got == rows else {
            throw FathomError(.malformedFile, "expected \(rows) vectors, read \(got)", path: path)
        }
        return m
    }
}
