//! Scalar reference of the kquants family (to be written).
