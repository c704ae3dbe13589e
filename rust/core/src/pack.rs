//! Bit packing of 2/3/4/8-bit codes (to be written).
