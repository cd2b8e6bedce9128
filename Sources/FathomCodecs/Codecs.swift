// Placeholder: LeanVec / LVQ / OSQ codecs land here (issue "Compressed postings").
public enum FathomCodecsVersion { public static let current = 1 }
