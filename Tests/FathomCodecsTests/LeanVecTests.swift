import CKernels
import FathomCore
import FathomMath
import Testing
@testable import FathomCodecs

// MARK: - helpers

/// Random orthonormal columns (D×k, row-major) by Gram-Schmidt on Gaussian vectors.
func randomOrthonormal(_ D: Int, _ k: Int, rng: inout SeededRandom) -> [[Double]] {
    var cols = [[Double]]()
    while cols.count < k {
        var v = (0..<D).map { _ in rng.gaussian() }
        for c in cols {
            let p = zip(v, c).reduce(0) { $0 + $1.0 * $1.1 }
            for i in 0..<D { v[i] -= p * c[i] }
        }
        let n = v.reduce(0) { $0 + $1 * $1 }.squareRoot()
        if n > 1e-6 { cols.append(v.map { $0 / n }) }
    }
    return cols
}

func matrixFrom(_ rows: [[Float]]) -> Matrix {
    Matrix(rows: rows.count, cols: rows[0].count, values: rows.flatMap { $0 })
}

/// ‖S − Ŝ‖_F / ‖S‖_F where S = Q Xᵀ and Ŝ_ij = ⟨projectData(x_j), projectQuery(q_i, .ip)⟩ + ⟨μ, q_i⟩.
func innerProductError(_ p: LeanVecProjection, data: Matrix, queries: Matrix) -> Double {
    let px = p.projectData(data)
    let pq = p.projectQueries(queries, metric: .ip)
    var err = 0.0, total = 0.0
    for i in 0..<queries.rows {
        let off = Double(p.queryOffset(queries.row(i)))
        for j in 0..<data.rows {
            var exact = 0.0, approx = 0.0
            for k in 0..<data.cols { exact += Double(queries.row(i)[k]) * Double(data.row(j)[k]) }
            for k in 0..<p.outputDim { approx += Double(pq.row(i)[k]) * Double(px.row(j)[k]) }
            approx += off
            err += (exact - approx) * (exact - approx)
            total += exact * exact
        }
    }
    return (err / total).squareRoot()
}

/// Data with most of its variance in coordinates 0..<16; queries living in an 8-dimensional
/// subspace of coordinates 16..<48, where the data varies less.
func oodSets(seed: UInt64, nData: Int, nQueries: Int, D: Int = 48) -> (data: Matrix, train: Matrix, test: Matrix) {
    var rng = SeededRandom(seed: seed)
    var data = [[Float]]()
    for _ in 0..<nData {
        var x = [Float](repeating: 0, count: D)
        for i in 0..<D { x[i] = Float(rng.gaussian() * (i < 16 ? 3 : 1)) + (i % 3 == 0 ? 0.5 : 0) }
        data.append(x)
    }
    let basis = randomOrthonormal(D - 16, 8, rng: &rng)
    func queries(_ n: Int) -> Matrix {
        var out = [[Float]]()
        for _ in 0..<n {
            var q = [Float](repeating: 0, count: D)
            for b in basis {
                let z = rng.gaussian()
                for i in 0..<(D - 16) { q[16 + i] += Float(z * b[i]) }
            }
            for i in 0..<D { q[i] += Float(0.01 * rng.gaussian()) }
            out.append(q)
        }
        return matrixFrom(out)
    }
    return (matrixFrom(data), queries(nQueries), queries(nQueries))
}

// MARK: - PCA

@Test func pcaRecoversPlantedSubspace() throws {
    let D = 64, r = 12, d = 16, n = 3000
    var rng = SeededRandom(seed: 11)
    let u = randomOrthonormal(D, r, rng: &rng)
    let offset = (0..<D).map { _ in Float(rng.gaussian() * 5) }
    var rows = [[Float]]()
    for _ in 0..<n {
        var x = offset
        for (k, c) in u.enumerated() {
            let z = rng.gaussian() * Double(r - k)   // distinct variances
            for i in 0..<D { x[i] += Float(z * c[i]) }
        }
        for i in 0..<D { x[i] += Float(1e-3 * rng.gaussian()) }
        rows.append(x)
    }
    let sample = matrixFrom(rows)
    let p = try LeanVecProjection.trainPCA(sample: sample, targetDim: d)
    #expect(p.kind == .pca && p.inputDim == D && p.outputDim == d)
    #expect(p.explainedVariance >= 0.99, "explained variance \(p.explainedVariance)")
    #expect(p.dataMatrix === p.queryMatrix)
    #expect(p.loss.isNaN)
    // Orthonormal columns: BᵀB ≈ I.
    let b = p.dataMatrix
    for i in 0..<d {
        for j in 0..<d {
            var s = 0.0
            for k in 0..<D { s += Double(b.data[k * d + i]) * Double(b.data[k * d + j]) }
            #expect(abs(s - (i == j ? 1 : 0)) < 1e-4, "BᵀB[\(i),\(j)] = \(s)")
        }
    }
    // The planted directions lie in the span of B: ‖Bᵀu‖ ≈ 1.
    for c in u {
        var n2 = 0.0
        for j in 0..<d {
            var s = 0.0
            for k in 0..<D { s += Double(b.data[k * d + j]) * c[k] }
            n2 += s * s
        }
        #expect(abs(n2 - 1) < 1e-3, "planted direction captured \(n2)")
    }
    // The mean is the sample mean.
    for i in 0..<D { #expect(abs(p.mean[i] - offset[i]) < 0.5) }
    // L2 distances survive the projection (mean subtracted on both sides).
    var px = [Float](repeating: 0, count: d), pq = px
    for t in 0..<20 {
        let x = sample.row(t), q = sample.row(t + 100)
        p.projectData(x, into: &px)
        p.projectQuery(q, into: &pq, metric: .l2)
        let exact = Double(Distance.l2sq(x, q, D)), approx = Double(Distance.l2sq(px, pq, d))
        #expect(abs(exact - approx) <= 1e-3 * exact + 1e-3)
    }
}

@Test func singleAndBatchProjectionsAgree() throws {
    let sets = oodSets(seed: 3, nData: 300, nQueries: 50)
    let p = try LeanVecProjection.trainPCA(sample: sets.data, targetDim: 8)
    let px = p.projectData(sets.data)
    let ql2 = p.projectQueries(sets.train, metric: .l2), qip = p.projectQueries(sets.train, metric: .ip)
    var y = [Float](repeating: 0, count: 8)
    for i in 0..<20 {
        p.projectData(sets.data.row(i), into: &y)
        for k in 0..<8 { #expect(abs(y[k] - px.row(i)[k]) < 1e-4) }
        p.projectQuery(sets.train.row(i), into: &y, metric: .l2)
        for k in 0..<8 { #expect(abs(y[k] - ql2.row(i)[k]) < 1e-4) }
        p.projectQuery(sets.train.row(i), into: &y, metric: .ip)
        for k in 0..<8 { #expect(abs(y[k] - qip.row(i)[k]) < 1e-4) }
    }
}

@Test func defaultDimIsHalfRoundedUpToEight() {
    #expect(LeanVecProjection.defaultDim(128) == 64)
    #expect(LeanVecProjection.defaultDim(768) == 384)
    #expect(LeanVecProjection.defaultDim(100) == 56)
    #expect(LeanVecProjection.defaultDim(200) == 104)
    #expect(LeanVecProjection.defaultDim(96) == 48)
    #expect(LeanVecProjection.defaultDim(4) == 4)
    #expect(LeanVecProjection.defaultDim(1) == 1)
}

@Test func invalidTrainingArgumentsThrow() {
    let m = Matrix(rows: 10, cols: 8)
    #expect(throws: FathomError.self) { try LeanVecProjection.trainPCA(sample: m, targetDim: 9) }
    #expect(throws: FathomError.self) { try LeanVecProjection.trainPCA(sample: m, targetDim: 0) }
    #expect(throws: FathomError.self) {
        try LeanVecProjection.trainOOD(data: m, queries: Matrix(rows: 5, cols: 7), targetDim: 4)
    }
}

// MARK: - OOD

@Test func oodBeatsPCAOnOutOfDistributionQueries() throws {
    let sets = oodSets(seed: 21, nData: 2000, nQueries: 400)
    let d = 8
    let ood = try LeanVecProjection.trainOOD(data: sets.data, queries: sets.train, targetDim: d)
    let pca = try LeanVecProjection.trainPCA(sample: sets.data, targetDim: d)
    #expect(ood.kind == .ood && ood.outputDim == d)
    let hist = ood.lossHistory
    #expect(hist.count >= 3 && hist.count <= 500)
    #expect(hist.last! < hist.first!, "loss \(hist.first!) -> \(hist.last!)")
    #expect(ood.loss == hist.last!)

    // The recorded loss is ‖Q Xcᵀ − Q A Bᵀ Xcᵀ‖² / (n_Q n_X) on the training sets.
    let px = ood.projectData(sets.data)
    let pq = ood.projectQueries(sets.train, metric: .ip)
    var direct = 0.0
    for i in 0..<sets.train.rows {
        for j in 0..<sets.data.rows {
            var exact = 0.0, approx = 0.0
            for k in 0..<48 { exact += Double(sets.train.row(i)[k]) * Double(sets.data.row(j)[k] - ood.mean[k]) }
            for k in 0..<d { approx += Double(pq.row(i)[k]) * Double(px.row(j)[k]) }
            direct += (exact - approx) * (exact - approx)
        }
    }
    direct /= Double(sets.train.rows * sets.data.rows)
    #expect(abs(direct - Double(ood.loss)) <= 2e-2 * direct + 1e-4, "direct \(direct) vs recorded \(ood.loss)")

    // Held-out queries: OOD reconstructs inner products far better than PCA.
    let eOOD = innerProductError(ood, data: sets.data, queries: sets.test)
    let ePCA = innerProductError(pca, data: sets.data, queries: sets.test)
    #expect(eOOD < 0.5 * ePCA, "OOD error \(eOOD) vs PCA \(ePCA)")
    #expect(eOOD < 0.2)
}

// MARK: - serialization

@Test func serializationRoundTripsAndRejectsDamage() throws {
    let sets = oodSets(seed: 5, nData: 400, nQueries: 100)
    let pca = try LeanVecProjection.trainPCA(sample: sets.data, targetDim: 8)
    let ood = try LeanVecProjection.trainOOD(data: sets.data, queries: sets.train, targetDim: 8, maxSteps: 20)
    for p in [pca, ood] {
        let bytes = p.encode()
        #expect(bytes.count == 36 + 4 * 48 + 8 * 48 * 8)
        #expect(Array(bytes[0..<8]) == Array("FTHMLEAN".utf8))
        let back = try LeanVecProjection.decode(bytes)
        #expect(back.kind == p.kind && back.inputDim == 48 && back.outputDim == 8)
        #expect(back.mean == p.mean)
        #expect(back.loss.bitPattern == p.loss.bitPattern)
        #expect(back.explainedVariance.bitPattern == p.explainedVariance.bitPattern)
        for i in 0..<(48 * 8) {
            #expect(back.dataMatrix.data[i] == p.dataMatrix.data[i])
            #expect(back.queryMatrix.data[i] == p.queryMatrix.data[i])
        }
        if p.kind == .pca { #expect(back.dataMatrix === back.queryMatrix) }
        #expect(back.encode() == bytes)

        // Truncated, extended, flipped: corruptIndex.
        for bad in [Array(bytes.dropLast(1)), Array(bytes.prefix(20)), bytes + [0]] {
            #expect { try LeanVecProjection.decode(bad) } throws: { ($0 as? FathomError)?.code == .corruptIndex }
        }
        var flipped = bytes
        flipped[100] ^= 0x10
        #expect { try LeanVecProjection.decode(flipped) } throws: { ($0 as? FathomError)?.code == .corruptIndex }
        var magic = bytes
        magic[0] = UInt8(ascii: "X")
        #expect { try LeanVecProjection.decode(magic) } throws: { ($0 as? FathomError)?.code == .corruptIndex }
        var version = bytes
        version[8] = 2
        #expect { try LeanVecProjection.decode(version) } throws: { ($0 as? FathomError)?.code == .incompatibleIndex }
    }
}

// MARK: - LeanVec + LVQ together

@Test func projectedInnerProductThroughLVQ8() throws {
    let sets = oodSets(seed: 8, nData: 500, nQueries: 20)
    let p = try LeanVecProjection.trainPCA(sample: sets.data, targetDim: 16)
    let codec = LVQCodec(kind: .lvq8, dim: 16)
    let px = p.projectData(sets.data)
    let codes = codec.encode(px)
    var pq = [Float](repeating: 0, count: 16)
    var out = [Float](repeating: 0, count: sets.data.rows)
    for i in 0..<sets.train.rows {
        let q = sets.train.row(i)
        p.projectQuery(q, into: &pq, metric: .ip)
        let prepared = codec.prepare(query: pq)
        codec.distances(prepared, codes: codes, count: sets.data.rows, stride: codec.bytesPerVector, metric: .ip, out: &out)
        let offset = p.queryOffset(q)
        for j in 0..<sets.data.rows {
            let approx = -out[j] + offset
            // Exact within the projection: compare to the float projection path.
            var proj = offset
            for k in 0..<16 { proj += pq[k] * px.row(j)[k] }
            var bound: Float = 0
            let (scale, _) = codec.parameters(codes.withUnsafeBytes { $0.baseAddress! + j * codec.bytesPerVector })
            for k in 0..<16 { bound += abs(pq[k]) * scale / 2 }
            #expect(abs(approx - proj) <= bound * 1.01 + 1e-3)
        }
    }
}
