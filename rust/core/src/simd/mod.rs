//! Run-time ISA selection and the SIMD kernels.
//!
//! * The best level the CPU supports is detected once ([`detected`]); `LOWBIT_ISA=scalar|avx2|
//!   avx512|neon` overrides it ([`active`]) and is an error if the CPU lacks the level.
//! * Kernels are written once, generic over the small vocabulary trait [`vocab::Simd`]
//!   (f32/i32 lanes, masks, a few integer ops), and monomorphised inside a
//!   `#[target_feature]` function per ISA (`avx2.rs`, `avx512.rs`, `neon.rs`). The scalar
//!   references in [`crate::blocks`] are separate, plain code: every SIMD kernel is tested
//!   against them bit for bit.
//! * [`emu::Emu`] implements the vocabulary with plain arrays of any lane count, so the generic
//!   kernels' lane logic is exercised at 4, 8 and 16 lanes on every host, including the 16-lane
//!   shape of AVX-512 on a machine without AVX-512.

use std::fmt;
use std::sync::OnceLock;

use crate::error::{Error, Result};

pub mod emu;
pub mod vocab;

pub mod affine;
pub mod dq;
pub mod engine;
pub mod float;
pub mod iq4nl;
pub mod kquants;
pub mod legacy;
pub mod matmul;

#[cfg(target_arch = "x86_64")]
pub mod avx2;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(target_arch = "aarch64")]
pub mod neon;

/// An instruction-set level a kernel can run at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// The plain-Rust reference.
    Scalar,
    /// x86-64 AVX2 + FMA + F16C (Haswell and later, Zen).
    Avx2,
    /// x86-64 AVX-512 F/BW/DQ/VL (Skylake-X, Ice Lake, Zen 4 and later).
    Avx512,
    /// AArch64 Advanced SIMD (always present on aarch64).
    Neon,
}

impl Isa {
    /// Every level, in the order used by tests and benchmarks.
    pub const ALL: [Isa; 4] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon];

    /// The lower-case name used by `LOWBIT_ISA` and `lowbit.isa()`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }

    /// Parse a level name (case-insensitive).
    pub fn parse(name: &str) -> Result<Isa> {
        let lower = name.trim().to_ascii_lowercase();
        Isa::ALL
            .into_iter()
            .find(|isa| isa.name() == lower)
            .ok_or_else(|| Error::Isa(format!("unknown ISA {name:?}; valid: scalar, avx2, avx512, neon")))
    }

    /// Whether this CPU can run kernels of this level.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            Isa::Avx2 => has_avx2(),
            Isa::Avx512 => has_avx512(),
            Isa::Neon => cfg!(target_arch = "aarch64"),
        }
    }

    /// `Ok(self)` if available, else an [`Error::Isa`] that says what the CPU has.
    pub fn require(self) -> Result<Isa> {
        if self.is_available() {
            Ok(self)
        } else {
            Err(Error::Isa(format!(
                "ISA {} is not supported by this CPU (available: {})",
                self.name(),
                available().iter().map(|i| i.name()).collect::<Vec<_>>().join(", ")
            )))
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(target_arch = "x86_64")]
fn has_avx2() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}
#[cfg(not(target_arch = "x86_64"))]
fn has_avx2() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    has_avx2()
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512dq")
        && is_x86_feature_detected!("avx512vl")
}
#[cfg(not(target_arch = "x86_64"))]
fn has_avx512() -> bool {
    false
}

/// The levels this CPU supports, scalar first.
pub fn available() -> Vec<Isa> {
    Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
}

/// The best level this CPU supports (detected once).
pub fn detected() -> Isa {
    static DETECTED: OnceLock<Isa> = OnceLock::new();
    *DETECTED.get_or_init(|| {
        if has_avx512() {
            Isa::Avx512
        } else if has_avx2() {
            Isa::Avx2
        } else if cfg!(target_arch = "aarch64") {
            Isa::Neon
        } else {
            Isa::Scalar
        }
    })
}

/// The level in use: `LOWBIT_ISA` if set (read once, an error if unknown or unsupported),
/// otherwise [`detected`].
pub fn active() -> Result<Isa> {
    static ACTIVE: OnceLock<Result<Isa>> = OnceLock::new();
    ACTIVE
        .get_or_init(|| match std::env::var("LOWBIT_ISA") {
            Ok(v) if !v.trim().is_empty() => {
                Isa::parse(&v).and_then(Isa::require).map_err(|e| Error::Isa(format!("LOWBIT_ISA={v}: {e}")))
            }
            _ => Ok(detected()),
        })
        .clone()
}

/// A kernel written once for every ISA: [`Kernel::scalar`] is the plain reference (or calls
/// it), [`Kernel::simd`] the generic SIMD version. [`run`] picks one for an [`Isa`].
///
/// `simd` must be `#[inline(always)]` so that it is compiled inside the `#[target_feature]`
/// wrapper of each ISA (the pattern of pulp's `WithSimd`).
pub trait Kernel {
    /// What the kernel returns.
    type Output;
    /// The scalar reference.
    fn scalar(self) -> Self::Output;
    /// The SIMD version, generic over the vocabulary.
    fn simd<S: vocab::Simd>(self, s: S) -> Self::Output;
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn run_avx2<K: Kernel>(k: K, t: avx2::Avx2) -> K::Output {
    k.simd(t)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512dq,avx512vl")]
unsafe fn run_avx512<K: Kernel>(k: K, t: avx512::Avx512) -> K::Output {
    k.simd(t)
}

#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn run_neon<K: Kernel>(k: K, t: neon::Neon) -> K::Output {
    k.simd(t)
}

/// A hint to bring the cache line at `p` into L2 (x86-64 `prefetcht1`; nothing elsewhere).
/// Never faults, whatever `p` is: a prefetch does not access memory architecturally.
#[inline(always)]
pub fn prefetch_l2(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint that does not access memory architecturally; SSE is part
    // of x86-64.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Run `k` at `isa`. Panics if the CPU lacks `isa`: callers validate the level first
/// ([`Isa::require`]), as [`crate::quant`] does.
#[inline]
pub fn run<K: Kernel>(isa: Isa, k: K) -> K::Output {
    match isa {
        Isa::Scalar => k.scalar(),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => {
            let t = avx2::Avx2::new().expect("AVX2 kernel requested on a CPU without AVX2");
            // SAFETY: the token proves AVX2/FMA/F16C are available.
            unsafe { run_avx2(k, t) }
        }
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => {
            let t = avx512::Avx512::new().expect("AVX-512 kernel requested on a CPU without AVX-512");
            // SAFETY: the token proves the AVX-512 features are available.
            unsafe { run_avx512(k, t) }
        }
        #[cfg(target_arch = "aarch64")]
        Isa::Neon => {
            let t = neon::Neon::new().expect("NEON is always present on aarch64");
            // SAFETY: NEON is part of the aarch64 base ISA.
            unsafe { run_neon(k, t) }
        }
        #[allow(unreachable_patterns)]
        other => panic!("ISA {other} is not compiled for this architecture"),
    }
}
