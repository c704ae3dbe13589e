//! Empty library: this crate only hosts the criterion benchmarks in `benches/`.
