import CAIO

/// O_DIRECT (invisible to Swift through Glibc; re-exported by the CAIO shim).
public let fathomODirect: Int32 = caio_O_DIRECT
