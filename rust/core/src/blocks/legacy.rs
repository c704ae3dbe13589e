//! Scalar reference of the legacy family (to be written).
