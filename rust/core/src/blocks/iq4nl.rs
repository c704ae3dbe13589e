//! Scalar reference of the iq4nl family (to be written).
