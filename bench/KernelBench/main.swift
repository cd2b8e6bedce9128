import CKernels
print(String(cString: fk_simd_name()))
