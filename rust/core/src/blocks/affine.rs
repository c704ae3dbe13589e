//! Scalar reference of the affine family (to be written).
