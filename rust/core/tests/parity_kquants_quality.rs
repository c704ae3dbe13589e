//! Quality of the k-quants against ggml's own algorithms.
//!
//! `ggml` below is a literal, independent port of llama.cpp's `ggml/src/ggml-quants.c`
//! (`quantize_row_q{2..6}_K_ref` without importance, `quantize_row_q{2..6}_K_impl` with it,
//! including the `nearest_int` bit trick), with no normalisation and no refinement. It serves as
//! the baseline: our `Mode::Ggml` must reproduce its bytes on ordinary data, and our default
//! `Mode::Refined` must never have a larger error on any row (plain squared error without
//! importance, importance-weighted with it).

mod common;

use common::{importance, Rng};
use lowbit_core::blocks::kquants::{self as ours, Mode};
use lowbit_core::QType;

const TYPES: [QType; 5] = [QType::Q2K, QType::Q3K, QType::Q4K, QType::Q5K, QType::Q6K];

/// Literal port of ggml's k-quant quantizers (reference: llama.cpp `ggml-quants.c`).
#[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
mod ggml {
    use half::f16;
    use lowbit_core::QType;

    const QK_K: usize = 256;
    const GROUP_MAX_EPS: f32 = 1e-15;

    fn nearest_int(fval: f32) -> i32 {
        let val = fval + 12582912.0;
        let i = val.to_bits() as i32;
        (i & 0x007f_ffff) - 0x0040_0000
    }

    fn fp16(v: f32) -> u16 {
        f16::from_f32(v).to_bits()
    }

    fn fp32(h: u16) -> f32 {
        f16::from_bits(h).to_f32()
    }

    fn make_qx_quants(n: usize, nmax: i32, x: &[f32], l: &mut [i8], qw: Option<&[f32]>) -> f32 {
        let (mut max, mut amax) = (0f32, 0f32);
        for i in 0..n {
            let ax = x[i].abs();
            if ax > amax {
                amax = ax;
                max = x[i];
            }
        }
        if amax < GROUP_MAX_EPS {
            l[..n].fill(0);
            return 0.0;
        }
        let mut iscale = -(nmax as f32) / max;
        let w = |i: usize| qw.map_or(x[i] * x[i], |q| q[i]);
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for i in 0..n {
            let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            l[i] = (li + nmax) as i8;
            sumlx += w(i) * x[i] * li as f32;
            suml2 += w(i) * li as f32 * li as f32;
        }
        let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
        let mut best = scale * sumlx;
        for is in -9..=9 {
            if is == 0 {
                continue;
            }
            iscale = -(nmax as f32 + 0.1 * is as f32) / max;
            let (mut sumlx, mut suml2) = (0f32, 0f32);
            for i in 0..n {
                let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
                sumlx += w(i) * x[i] * li as f32;
                suml2 += w(i) * li as f32 * li as f32;
            }
            if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
                for i in 0..n {
                    l[i] = (nmax + nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1)) as i8;
                }
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        scale
    }

    fn make_q3_quants(n: usize, nmax: i32, x: &[f32], l: &mut [i8]) -> f32 {
        let (mut max, mut amax) = (0f32, 0f32);
        for i in 0..n {
            let ax = x[i].abs();
            if ax > amax {
                amax = ax;
                max = x[i];
            }
        }
        if amax < GROUP_MAX_EPS {
            l[..n].fill(0);
            return 0.0;
        }
        let iscale = -(nmax as f32) / max;
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for i in 0..n {
            let li = nearest_int(iscale * x[i]).clamp(-nmax, nmax - 1);
            l[i] = li as i8;
            let w = x[i] * x[i];
            sumlx += w * x[i] * li as f32;
            suml2 += w * li as f32 * li as f32;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let w = x[i] * x[i];
                let li = l[i] as f32;
                let mut slx = sumlx - w * x[i] * li;
                if slx > 0.0 {
                    let mut sl2 = suml2 - w * li * li;
                    let new_l = nearest_int(x[i] * sl2 / slx).clamp(-nmax, nmax - 1);
                    if new_l != l[i] as i32 {
                        slx += w * x[i] * new_l as f32;
                        sl2 += w * new_l as f32 * new_l as f32;
                        if sl2 > 0.0 && slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l[i] = new_l as i8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        for v in &mut l[..n] {
            *v += nmax as i8;
        }
        if suml2 > 0.0 {
            sumlx / suml2
        } else {
            0.0
        }
    }

    /// make_qkx2_quants (`qkx3 == false`) / make_qkx3_quants.
    fn make_qkx(
        n: usize,
        nmax: i32,
        x: &[f32],
        weights: &[f32],
        l: &mut [u8],
        the_min: &mut f32,
        rmin: f32,
        rdelta: f32,
        nstep: i32,
        use_mad: bool,
        qkx3: bool,
    ) -> f32 {
        let mut laux = [0u8; 32];
        let (mut min, mut max) = (x[0], x[0]);
        let mut sum_w = weights[0];
        let mut sum_x = sum_w * x[0];
        for i in 1..n {
            if x[i] < min {
                min = x[i];
            }
            if x[i] > max {
                max = x[i];
            }
            sum_w += weights[i];
            sum_x += weights[i] * x[i];
        }
        if min > 0.0 {
            min = 0.0;
        }
        if max == min {
            l[..n].fill(0);
            *the_min = -min;
            return 0.0;
        }
        let mut iscale = nmax as f32 / (max - min);
        let mut scale = 1.0 / iscale;
        let mut best_error = 0f32;
        for i in 0..n {
            let li = nearest_int(iscale * (x[i] - min));
            l[i] = li.clamp(0, nmax) as u8;
            let diff = scale * l[i] as f32 + min - x[i];
            let diff = if use_mad { diff.abs() } else { diff * diff };
            best_error += weights[i] * diff;
        }
        for is in 0..=nstep {
            iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
            let (mut sum_l, mut sum_l2, mut sum_xl) = (0f32, 0f32, 0f32);
            for i in 0..n {
                let li = if qkx3 {
                    let v = iscale * (x[i] - min);
                    if v > 0.0 {
                        nearest_int(v.min(nmax as f32))
                    } else {
                        0
                    }
                } else {
                    nearest_int(iscale * (x[i] - min)).clamp(0, nmax)
                };
                laux[i] = li as u8;
                let (w, lf) = (weights[i], li as f32);
                sum_l += w * lf;
                sum_l2 += w * lf * lf;
                sum_xl += w * lf * x[i];
            }
            let d = sum_w * sum_l2 - sum_l * sum_l;
            if d > 0.0 {
                let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
                let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
                if this_min > 0.0 {
                    this_min = 0.0;
                    this_scale = sum_xl / sum_l2;
                }
                let mut cur_error = 0f32;
                for i in 0..n {
                    let diff = this_scale * laux[i] as f32 + this_min - x[i];
                    let diff = if use_mad { diff.abs() } else { diff * diff };
                    cur_error += weights[i] * diff;
                }
                if cur_error < best_error {
                    l[..n].copy_from_slice(&laux[..n]);
                    best_error = cur_error;
                    scale = this_scale;
                    min = this_min;
                }
            }
        }
        *the_min = -min;
        scale
    }

    fn make_qp_quants(n: usize, nmax: i32, x: &[f32], l: &mut [u8], qw: &[f32]) -> f32 {
        let mut max = 0f32;
        for i in 0..n {
            max = if max > x[i] { max } else { x[i] };
        }
        if max < GROUP_MAX_EPS {
            l[..n].fill(0);
            return 0.0;
        }
        let mut iscale = nmax as f32 / max;
        for i in 0..n {
            l[i] = nearest_int(iscale * x[i]) as u8;
        }
        let scale = 1.0 / iscale;
        let mut best_mse = 0f32;
        for i in 0..n {
            let diff = x[i] - scale * l[i] as f32;
            best_mse += qw[i] * diff * diff;
        }
        for is in -4..=4 {
            if is == 0 {
                continue;
            }
            let iscale_is = (0.1 * is as f32 + nmax as f32) / max;
            let scale_is = 1.0 / iscale_is;
            let mut mse = 0f32;
            for i in 0..n {
                let li = nearest_int(iscale_is * x[i]).min(nmax);
                let diff = x[i] - scale_is * li as f32;
                mse += qw[i] * diff * diff;
            }
            if mse < best_mse {
                best_mse = mse;
                iscale = iscale_is;
            }
        }
        let (mut sumlx, mut suml2) = (0f32, 0f32);
        for i in 0..n {
            let li = nearest_int(iscale * x[i]).min(nmax);
            l[i] = li as u8;
            sumlx += qw[i] * x[i] * li as f32;
            suml2 += qw[i] * li as f32 * li as f32;
        }
        for _ in 0..5 {
            let mut n_changed = 0;
            for i in 0..n {
                let li = l[i] as f32;
                let mut slx = sumlx - qw[i] * x[i] * li;
                let mut sl2 = suml2 - qw[i] * li * li;
                if slx > 0.0 && sl2 > 0.0 {
                    let new_l = nearest_int(x[i] * sl2 / slx).min(nmax);
                    if new_l != l[i] as i32 {
                        slx += qw[i] * x[i] * new_l as f32;
                        sl2 += qw[i] * new_l as f32 * new_l as f32;
                        if slx * slx * suml2 > sumlx * sumlx * sl2 {
                            l[i] = new_l as u8;
                            sumlx = slx;
                            suml2 = sl2;
                            n_changed += 1;
                        }
                    }
                }
            }
            if n_changed == 0 {
                break;
            }
        }
        if suml2 > 0.0 {
            sumlx / suml2
        } else {
            0.0
        }
    }

    fn pack2(l: &[u8; QK_K], qs: &mut [u8]) {
        for j in (0..QK_K).step_by(128) {
            for i in 0..32 {
                qs[j / 4 + i] = l[j + i] | (l[j + i + 32] << 2) | (l[j + i + 64] << 4) | (l[j + i + 96] << 6);
            }
        }
    }

    fn put(y: &mut [u8], at: usize, h: u16) {
        y[at..at + 2].copy_from_slice(&h.to_le_bytes());
    }

    fn q2k(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins, mut sw) = ([0f32; 16], [0f32; 16], [0f32; 16]);
        let mut weights = [0f32; 16];
        let mut sumx2 = 0f32;
        for j in 0..QK_K {
            sumx2 += x[j] * x[j];
        }
        let sigma2 = sumx2 / QK_K as f32;
        for j in 0..16 {
            let xj = &x[16 * j..16 * j + 16];
            match qw {
                None => {
                    for i in 0..16 {
                        weights[i] = xj[i].abs();
                    }
                    scales[j] =
                        make_qkx(16, 3, xj, &weights, &mut l[16 * j..], &mut mins[j], -0.5, 0.1, 15, true, false);
                }
                Some(q) => {
                    for i in 0..16 {
                        weights[i] = q[16 * j + i] * (sigma2 + xj[i] * xj[i]).sqrt();
                    }
                    for i in 0..16 {
                        sw[j] += weights[i];
                    }
                    scales[j] =
                        make_qkx(16, 3, xj, &weights, &mut l[16 * j..], &mut mins[j], -0.9, 0.05, 36, false, true);
                }
            }
        }
        let (d16, m16);
        match qw {
            None => {
                let (mut max_scale, mut max_min) = (0f32, 0f32);
                for j in 0..16 {
                    if scales[j] > max_scale {
                        max_scale = scales[j];
                    }
                    if mins[j] > max_min {
                        max_min = mins[j];
                    }
                }
                if max_scale > 0.0 {
                    let iscale = 15.0 / max_scale;
                    for j in 0..16 {
                        y[j] = nearest_int(iscale * scales[j]) as u8;
                    }
                    d16 = fp16(max_scale / 15.0);
                } else {
                    y[..16].fill(0);
                    d16 = fp16(0.0);
                }
                if max_min > 0.0 {
                    let iscale = 15.0 / max_min;
                    for j in 0..16 {
                        y[j] |= (nearest_int(iscale * mins[j]) << 4) as u8;
                    }
                    m16 = fp16(max_min / 15.0);
                } else {
                    m16 = fp16(0.0);
                }
            }
            Some(_) => {
                let (mut ls, mut lm) = ([0u8; 16], [0u8; 16]);
                d16 = fp16(make_qp_quants(16, 15, &scales, &mut ls, &sw));
                m16 = fp16(make_qp_quants(16, 15, &mins, &mut lm, &sw));
                for j in 0..16 {
                    y[j] = ls[j] | (lm[j] << 4);
                }
            }
        }
        for j in 0..16 {
            let d = fp32(d16) * (y[j] & 0xF) as f32;
            if d == 0.0 {
                continue;
            }
            let dm = fp32(m16) * (y[j] >> 4) as f32;
            for i in 0..16 {
                l[16 * j + i] = nearest_int((x[16 * j + i] + dm) / d).clamp(0, 3) as u8;
            }
        }
        pack2(&l, &mut y[16..80]);
        put(y, 80, d16);
        put(y, 82, m16);
    }

    fn q3k(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let sc = &mut [0u8; 12];
        let d16;
        match qw {
            None => {
                for j in 0..16 {
                    scales[j] = make_q3_quants(16, 4, &x[16 * j..16 * j + 16], &mut l[16 * j..]);
                }
                let (mut max_scale, mut amax) = (0f32, 0f32);
                for j in 0..16 {
                    if scales[j].abs() > amax {
                        amax = scales[j].abs();
                        max_scale = scales[j];
                    }
                }
                if max_scale != 0.0 {
                    let iscale = -32.0 / max_scale;
                    for j in 0..16 {
                        let lv = (nearest_int(iscale * scales[j]) as i8).clamp(-32, 31) + 32;
                        if j < 8 {
                            sc[j] = lv as u8 & 0xF;
                        } else {
                            sc[j - 8] |= (lv as u8 & 0xF) << 4;
                        }
                        sc[j % 4 + 8] |= ((lv as u8) >> 4) << (2 * (j / 4));
                    }
                    d16 = fp16(1.0 / iscale);
                } else {
                    d16 = fp16(0.0);
                }
            }
            Some(q) => {
                let mut sumx2 = 0f32;
                for j in 0..QK_K {
                    sumx2 += x[j] * x[j];
                }
                let sigma2 = 2.0 * sumx2 / QK_K as f32;
                let mut sw = [0f32; 16];
                let mut weight = [0f32; 16];
                for j in 0..16 {
                    for i in 0..16 {
                        weight[i] = q[16 * j + i] * (sigma2 + x[16 * j + i] * x[16 * j + i]).sqrt();
                    }
                    let mut sumw = 0f32;
                    for i in 0..16 {
                        sumw += weight[i];
                    }
                    sw[j] = sumw;
                    scales[j] = make_qx_quants(16, 4, &x[16 * j..16 * j + 16], &mut l[16 * j..], Some(&weight));
                }
                let mut ls = [0i8; 16];
                let d_block = make_qx_quants(16, 32, &scales, &mut ls, Some(&sw));
                for j in 0..16 {
                    let lv = ls[j] as u8;
                    if j < 8 {
                        sc[j] = lv & 0xF;
                    } else {
                        sc[j - 8] |= (lv & 0xF) << 4;
                    }
                    sc[j % 4 + 8] |= (lv >> 4) << (2 * (j / 4));
                }
                d16 = fp16(d_block);
            }
        }
        for j in 0..16 {
            let lo = if j < 8 { sc[j] & 0xF } else { sc[j - 8] >> 4 };
            let s = (lo | (((sc[8 + j % 4] >> (2 * (j / 4))) & 3) << 4)) as i32 - 32;
            let d = fp32(d16) * s as f32;
            if d == 0.0 {
                continue;
            }
            for i in 0..16 {
                l[16 * j + i] = (nearest_int(x[16 * j + i] / d).clamp(-4, 3) + 4) as i8;
            }
        }
        let mut lu = [0u8; QK_K];
        y[..32].fill(0);
        for j in 0..QK_K {
            let mut v = l[j] as u8;
            if v > 3 {
                y[j % 32] |= 1 << (j / 32);
                v -= 4;
            }
            lu[j] = v;
        }
        pack2(&lu, &mut y[32..96]);
        y[96..108].copy_from_slice(sc);
        put(y, 108, d16);
    }

    fn q45k(x: &[f32], qw: Option<&[f32]>, five: bool, y: &mut [u8]) {
        let nmax = if five { 31 } else { 15 };
        let mut l = [0u8; QK_K];
        let (mut scales, mut mins, mut sw) = ([0f32; 8], [0f32; 8], [0f32; 8]);
        let mut weights = [0f32; 32];
        let mut sum_x2 = 0f32;
        for i in 0..QK_K {
            sum_x2 += x[i] * x[i];
        }
        let sigma2 = 2.0 * sum_x2 / QK_K as f32;
        for j in 0..8 {
            let xj = &x[32 * j..32 * j + 32];
            match qw {
                None => {
                    let mut s2 = 0f32;
                    for i in 0..32 {
                        s2 += xj[i] * xj[i];
                    }
                    let av_x = (s2 / 32.0).sqrt();
                    for i in 0..32 {
                        weights[i] = av_x + xj[i].abs();
                    }
                    let (rmin, nstep) = if five { (-0.5, 15) } else { (-1.0, 20) };
                    scales[j] = make_qkx(
                        32,
                        nmax,
                        xj,
                        &weights,
                        &mut l[32 * j..],
                        &mut mins[j],
                        rmin,
                        0.1,
                        nstep,
                        false,
                        false,
                    );
                }
                Some(q) => {
                    for i in 0..32 {
                        weights[i] = q[32 * j + i] * (sigma2 + xj[i] * xj[i]).sqrt();
                    }
                    let mut sumw = 0f32;
                    for i in 0..32 {
                        sumw += weights[i];
                    }
                    sw[j] = sumw;
                    scales[j] =
                        make_qkx(32, nmax, xj, &weights, &mut l[32 * j..], &mut mins[j], -0.9, 0.05, 36, false, true);
                }
            }
        }
        let (mut ls, mut lm) = ([0u8; 8], [0u8; 8]);
        let (d16, m16) = match qw {
            None => {
                let (mut max_scale, mut max_min) = (0f32, 0f32);
                for j in 0..8 {
                    if scales[j] > max_scale {
                        max_scale = scales[j];
                    }
                    if mins[j] > max_min {
                        max_min = mins[j];
                    }
                }
                let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
                let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
                for j in 0..8 {
                    ls[j] = (nearest_int(inv_scale * scales[j]) as u8).min(63);
                    lm[j] = (nearest_int(inv_min * mins[j]) as u8).min(63);
                }
                (fp16(max_scale / 63.0), fp16(max_min / 63.0))
            }
            Some(_) => {
                let d = make_qp_quants(8, 63, &scales, &mut ls, &sw);
                let m = make_qp_quants(8, 63, &mins, &mut lm, &sw);
                (fp16(d), fp16(m))
            }
        };
        let sc = &mut [0u8; 12];
        for j in 0..8 {
            if j < 4 {
                sc[j] = ls[j];
                sc[j + 4] = lm[j];
            } else {
                sc[j + 4] = (ls[j] & 0xF) | ((lm[j] & 0xF) << 4);
                sc[j - 4] |= (ls[j] >> 4) << 6;
                sc[j] |= (lm[j] >> 4) << 6;
            }
        }
        for j in 0..8 {
            let d = fp32(d16) * ls[j] as f32;
            if d == 0.0 {
                continue;
            }
            let dm = fp32(m16) * lm[j] as f32;
            for i in 0..32 {
                l[32 * j + i] = nearest_int((x[32 * j + i] + dm) / d).clamp(0, nmax) as u8;
            }
        }
        put(y, 0, d16);
        put(y, 2, m16);
        y[4..16].copy_from_slice(sc);
        let qs = if five { 48 } else { 16 };
        for c in 0..4 {
            for i in 0..32 {
                y[qs + 32 * c + i] = (l[64 * c + i] & 0xF) | ((l[64 * c + 32 + i] & 0xF) << 4);
            }
        }
        if five {
            y[16..48].fill(0);
            for (j, &v) in l.iter().enumerate() {
                if v > 15 {
                    y[16 + j % 32] |= 1 << (j / 32);
                }
            }
        }
    }

    fn q6k(x: &[f32], qw: Option<&[f32]>, y: &mut [u8]) {
        let mut l = [0i8; QK_K];
        let mut scales = [0f32; 16];
        let (mut max_scale, mut max_abs_scale) = (0f32, 0f32);
        for ib in 0..16 {
            let q = qw.map(|q| &q[16 * ib..16 * ib + 16]);
            let scale = make_qx_quants(16, 32, &x[16 * ib..16 * ib + 16], &mut l[16 * ib..], q);
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            y[..210].fill(0);
            return;
        }
        let iscale = -128.0 / max_scale;
        let d16 = fp16(1.0 / iscale);
        let mut sc = [0i8; 16];
        for ib in 0..16 {
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..16 {
            let d = fp32(d16) * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for i in 0..16 {
                l[16 * j + i] = (nearest_int(x[16 * j + i] / d).clamp(-32, 31) + 32) as i8;
            }
        }
        let lu: Vec<u8> = l.iter().map(|&v| v as u8).collect();
        for h in 0..2 {
            let (j, ql, qh) = (128 * h, 64 * h, 128 + 32 * h);
            for i in 0..32 {
                y[ql + i] = (lu[j + i] & 0xF) | ((lu[j + i + 64] & 0xF) << 4);
                y[ql + i + 32] = (lu[j + i + 32] & 0xF) | ((lu[j + i + 96] & 0xF) << 4);
                y[qh + i] = (lu[j + i] >> 4)
                    | ((lu[j + i + 32] >> 4) << 2)
                    | ((lu[j + i + 64] >> 4) << 4)
                    | ((lu[j + i + 96] >> 4) << 6);
            }
        }
        for j in 0..16 {
            y[192 + j] = sc[j] as u8;
        }
        put(y, 208, d16);
    }

    /// ggml's `quantize_qN_K` of one row.
    pub fn quantize(qtype: QType, x: &[f32], imp: Option<&[f32]>) -> Vec<u8> {
        let bb = qtype.info().block_bytes;
        let mut out = vec![0u8; x.len() / QK_K * bb];
        for (b, (xb, yb)) in x.chunks(QK_K).zip(out.chunks_mut(bb)).enumerate() {
            let q = imp.map(|w| &w[b * QK_K..(b + 1) * QK_K]);
            match qtype {
                QType::Q2K => q2k(xb, q, yb),
                QType::Q3K => q3k(xb, q, yb),
                QType::Q4K => q45k(xb, q, false, yb),
                QType::Q5K => q45k(xb, q, true, yb),
                _ => q6k(xb, q, yb),
            }
        }
        out
    }
}

fn quant(qtype: QType, x: &[f32], imp: Option<&[f32]>, mode: Mode) -> Vec<u8> {
    let mut out = vec![0u8; x.len() / 256 * qtype.info().block_bytes];
    ours::quantize_row_mode(qtype, x, &mut out, imp, mode);
    out
}

/// Σ w·(x − dequant(b))² (w = 1 when `w` is None), in f64.
fn sq_err(qtype: QType, x: &[f32], b: &[u8], w: Option<&[f32]>) -> f64 {
    let mut y = vec![0f32; x.len()];
    ours::dequantize_row(qtype, b, &mut y);
    x.iter()
        .zip(&y)
        .enumerate()
        .map(|(i, (a, b))| {
            let e = f64::from(a - b);
            w.map_or(1.0, |w| f64::from(w[i])) * e * e
        })
        .sum()
}

fn normal_row(r: &mut Rng, cols: usize) -> Vec<f32> {
    // Normal values with a per-256 scale drift, as weight rows have.
    (0..cols).map(|i| r.normal() * (0.5 + ((i / 256) % 5) as f32 * 0.25)).collect()
}

#[test]
fn ggml_mode_reproduces_ggml_bytes() {
    let cols = 2048;
    let mut r = Rng::new(21);
    for qtype in TYPES {
        let (mut same, mut total) = (0usize, 0usize);
        for row in 0..40 {
            let x = normal_row(&mut r, cols);
            let imp = importance(cols, row);
            let bb = qtype.info().block_bytes;
            // Without importance: byte-identical.
            let a = ggml::quantize(qtype, &x, None);
            let b = quant(qtype, &x, None, Mode::Ggml);
            common::assert_bytes_eq(&format!("{} ggml mode row {row}", qtype.name()), bb, &a, &b);
            // With importance: identical up to the summation order of sigma2.
            let a = ggml::quantize(qtype, &x, Some(&imp));
            let b = quant(qtype, &x, Some(&imp), Mode::Ggml);
            same += a.chunks(bb).zip(b.chunks(bb)).filter(|(p, q)| p == q).count();
            total += a.len() / bb;
        }
        eprintln!("{}: with importance, {same}/{total} blocks identical to ggml", qtype.name());
        assert!(same * 100 >= total * 95, "{}: only {same}/{total} blocks identical", qtype.name());
    }
}

#[test]
fn refined_never_worse_than_ggml() {
    // Per row: our plain squared error <= ggml's without importance, our importance-weighted
    // error <= ggml's with importance. Also prints the average gain.
    let cols = 4096;
    let mut r = Rng::new(8);
    for qtype in TYPES {
        let (mut e_ggml, mut e_ours, mut ew_ggml, mut ew_ours) = (0f64, 0f64, 0f64, 0f64);
        for row in 0..32 {
            let x = normal_row(&mut r, cols);
            let imp = importance(cols, 100 + row);
            let g = sq_err(qtype, &x, &ggml::quantize(qtype, &x, None), None);
            let o = sq_err(qtype, &x, &quant(qtype, &x, None, Mode::Refined), None);
            assert!(o <= g, "{} row {row}: plain error {o} > ggml {g}", qtype.name());
            let gw = sq_err(qtype, &x, &ggml::quantize(qtype, &x, Some(&imp)), Some(&imp));
            let ow = sq_err(qtype, &x, &quant(qtype, &x, Some(&imp), Mode::Refined), Some(&imp));
            // Per sub-block the refinement never increases the weighted error; the summation order
            // of sigma2 may change ggml's own choice by an ulp, so allow 0.1 % per row.
            assert!(ow <= gw * 1.001, "{} row {row}: weighted error {ow} > ggml {gw}", qtype.name());
            (e_ggml, e_ours, ew_ggml, ew_ours) = (e_ggml + g, e_ours + o, ew_ggml + gw, ew_ours + ow);
        }
        let n = (32 * cols) as f64;
        eprintln!(
            "{}: RMSE ggml {:.5} ours {:.5} ({:+.2} %); importance-weighted RMSE ggml {:.5} ours {:.5} ({:+.2} %)",
            qtype.name(),
            (e_ggml / n).sqrt(),
            (e_ours / n).sqrt(),
            ((e_ours / e_ggml).sqrt() - 1.0) * 100.0,
            (ew_ggml / n).sqrt(),
            (ew_ours / n).sqrt(),
            ((ew_ours / ew_ggml).sqrt() - 1.0) * 100.0
        );
        assert!(ew_ours <= ew_ggml, "{}: weighted error above ggml on average", qtype.name());
    }
}

#[test]
fn importance_lowers_weighted_error() {
    // Measured with the importance weights, quantizing with the importance is better than
    // without it (summed over many rows).
    let cols = 4096;
    let mut r = Rng::new(4);
    for qtype in TYPES {
        let (mut with, mut without) = (0f64, 0f64);
        for row in 0..24 {
            let x = normal_row(&mut r, cols);
            let imp = importance(cols, 300 + row);
            with += sq_err(qtype, &x, &quant(qtype, &x, Some(&imp), Mode::Refined), Some(&imp));
            without += sq_err(qtype, &x, &quant(qtype, &x, None, Mode::Refined), Some(&imp));
        }
        eprintln!("{}: weighted error with importance / without = {:.3}", qtype.name(), with / without);
        assert!(with <= without, "{}: importance did not help ({with} > {without})", qtype.name());
    }
}

#[test]
fn round_trip_rmse_bounds() {
    // Bound: the RMSE that plain round-to-nearest on each sub-block's min-max grid would give
    // under the uniform rounding-error model (RMSE of a step-Δ grid = Δ/√12), with Δ taken from
    // the data itself: affine types (codes 0..nmax over max − min(min, 0)): Δ = range / nmax;
    // q3_k / q6_k (codes −2^(b−1)..2^(b−1)−1, scale set by the largest magnitude):
    // Δ = max|x| / 2^(b−1). The least-squares searches can only move the grid where that lowers
    // the (weighted) error, so on N(0, 1) data they stay below it even after the super-block
    // quantization of the sub-scales.
    let cols = 4096;
    let mut r = Rng::new(77);
    let x: Vec<f32> = (0..cols * 16).map(|_| r.normal()).collect();
    for (qtype, n, nmax, affine) in [
        (QType::Q2K, 16, 3.0, true),
        (QType::Q3K, 16, 4.0, false),
        (QType::Q4K, 32, 15.0, true),
        (QType::Q5K, 32, 31.0, true),
        (QType::Q6K, 16, 32.0, false),
    ] {
        let mut sum_d2 = 0f64;
        for sub in x.chunks(n) {
            let max = sub.iter().fold(f32::MIN, |m, &v| m.max(v));
            let min = sub.iter().fold(0f32, |m, &v| m.min(v));
            let amax = sub.iter().fold(0f32, |m, &v| m.max(v.abs()));
            let step = if affine { (max - min) / nmax } else { amax / nmax };
            sum_d2 += f64::from(step) * f64::from(step);
        }
        let bound = (sum_d2 / (x.len() / n) as f64 / 12.0).sqrt();
        let b = quant(qtype, &x, None, Mode::Refined);
        let rmse = (sq_err(qtype, &x, &b, None) / x.len() as f64).sqrt();
        eprintln!("{}: RMSE {rmse:.5} (min-max rounding model {bound:.5})", qtype.name());
        assert!(rmse < bound, "{}: RMSE {rmse} >= {bound}", qtype.name());
    }
}
