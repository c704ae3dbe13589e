//! Scalar reference of the float family (to be written).
