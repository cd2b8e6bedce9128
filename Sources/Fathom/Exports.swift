// `import Fathom` gives the whole public API: errors and basic types (FathomCore),
// matrices and distances (FathomMath), vector files and ground truth (FathomStorage).
@_exported import FathomCore
@_exported import FathomMath
@_exported import FathomStorage
