//! The two-sided one-sample Kolmogorov–Smirnov distribution `kstwo`, ported from scipy 1.17's
//! `scipy/stats/_ksstats.py` (`_kolmogn` and the methods it picks among, after Simard and
//! L'Ecuyer 2011) and the one-sided `smirnov` survival function from scipy's `xsf` library
//! (`xsf/cephes/kolmogorov.h`).
//!
//! `ks_2samp`'s asymptotic p-value is `kstwo.sf(d, round(n1·n2 / (n1 + n2)))`, so this is the
//! code behind every two-sample KS p-value of a window larger than 10,000 rows.

use std::f64::consts::PI;

/// `2^128` and `2^-128`: scipy rescales intermediate results by these to stay in range.
const E128: i32 = 128;
const EP128: f64 = 3.402_823_669_209_385e38;
const EM128: f64 = 2.938_735_877_055_719e-39;

/// cephes' `MINLOG`: `exp` of anything below underflows to 0.
const MINLOG: f64 = -7.083_964_185_322_641e2;
/// `_ksstats._MIN_LOG`.
const MIN_LOG: f64 = -708.0;

/// `scipy.stats.kstwo.sf(d, n)`: `P(D_n > d)` for the two-sided one-sample KS statistic of a
/// sample of size `n`. NaN for `n == 0` or NaN `d` (scipy's bad value); 1 at or below the support
/// (`d <= 0.5 / n`), 0 at or above 1.
pub fn kstwo_sf(d: f64, n: u64) -> f64 {
    if n == 0 || d.is_nan() {
        return f64::NAN;
    }
    let nf = n as f64;
    if d <= 0.5 / nf {
        return 1.0;
    }
    if d >= 1.0 {
        return 0.0;
    }
    kolmogn_sf(n, d)
}

/// `_kolmogn(n, x, cdf=False)`: picks the method by `n` and `n·x²` as scipy does.
fn kolmogn_sf(n: u64, x: f64) -> f64 {
    let nf = n as f64;
    if x >= 1.0 {
        return 0.0;
    }
    if x <= 0.0 {
        return 1.0;
    }
    let t = nf * x;
    if t <= 1.0 {
        // Ruben–Gambino: 1/(2n) <= x <= 1/n.
        if t <= 0.5 {
            return 1.0;
        }
        let prob = if n <= 140 {
            let scale = 1.0 / nf;
            (1..=n).fold(1.0, |p, i| p * (i as f64 * scale * (2.0 * t - 1.0)))
        } else {
            (log_nfactorial_div_n_pow_n(nf) + nf * (2.0 * t - 1.0).ln()).exp()
        };
        return clip(1.0 - prob);
    }
    if t >= nf - 1.0 {
        // Ruben–Gambino.
        return clip(2.0 * (1.0 - x).powf(nf));
    }
    if x >= 0.5 {
        return clip(2.0 * smirnov_sf(n, x));
    }
    let nxsquared = t * x;
    if n <= 140 {
        if nxsquared <= 0.754693 {
            return clip(1.0 - dmtw_cdf(n, x));
        }
        if nxsquared <= 4.0 {
            return clip(1.0 - pomeranz_cdf(n, x));
        }
        return clip(2.0 * smirnov_sf(n, x));
    }
    if nxsquared >= 370.0 {
        return 0.0;
    }
    if nxsquared >= 2.2 {
        return clip(2.0 * smirnov_sf(n, x));
    }
    let cdf = if n <= 100_000 && nf * x.powf(1.5) <= 1.4 {
        dmtw_cdf(n, x)
    } else {
        pelz_good_cdf(n, x)
    };
    clip(1.0 - cdf)
}

/// `_clip_prob`: clips to `[0, 1]`, leaving NaN alone as `np.clip` does.
fn clip(p: f64) -> f64 {
    if p.is_nan() {
        p
    } else {
        p.clamp(0.0, 1.0)
    }
}

/// Stirling coefficients `B_{2j} / (2j) / (2j − 1)` for `j = 8, …, 1` (`_STIRLING_COEFFS`).
const STIRLING_COEFFS: [f64; 8] = [
    -2.955_065_359_477_124_2e-2,
    6.410_256_410_256_41e-3,
    -1.917_526_917_526_917_6e-3,
    8.417_508_417_508_418e-4,
    -5.952_380_952_380_952e-4,
    7.936_507_936_507_937e-4,
    -2.777_777_777_777_778e-3,
    8.333_333_333_333_333e-2,
];

/// `log(n! / n^n)` by Stirling's series with `n·log n` removed up front
/// (`_log_nfactorial_div_n_pow_n`).
fn log_nfactorial_div_n_pow_n(n: f64) -> f64 {
    let rn = 1.0 / n;
    let x = rn / n;
    let poly = STIRLING_COEFFS.iter().fold(0.0, |acc, &c| acc * x + c);
    n.ln() / 2.0 - n + (2.0 * PI).ln() / 2.0 + rn * poly
}

/// `_kolmogn_DMTW(n, d)`: `P(D_n <= d)` by Durbin's matrix algorithm as Marsaglia, Tsang and Wang
/// evaluate it: the k-th diagonal entry of `H^n` scaled by `n!/n^n`, with `H` of size `2k − 1`,
/// `k = ceil(n·d)`. Callers keep `k` small (`n·d² <= 0.754693`, or `n·d^1.5 <= 1.4`).
fn dmtw_cdf(n: u64, d: f64) -> f64 {
    if d >= 1.0 {
        return 1.0;
    }
    let nd = n as f64 * d;
    if nd <= 0.5 {
        return 0.0;
    }
    let k = nd.ceil() as usize;
    let h = k as f64 - nd;
    let m = 2 * k - 1;

    let mut v: Vec<f64> = (1..=m).map(|j| 1.0 - h.powf(j as f64)).collect();
    let mut w = vec![0.0; m];
    let mut fac = 1.0;
    for j in 1..=m {
        w[j - 1] = fac;
        fac /= j as f64;
        v[j - 1] *= fac;
    }
    let tt = (2.0 * h - 1.0).max(0.0).powf(m as f64) - 2.0 * h.powf(m as f64);
    v[m - 1] = (1.0 + tt) * fac;

    let mut hm = Matrix::zeros(m);
    for i in 1..m {
        for (row, &wv) in (i - 1..m).zip(w.iter()) {
            hm.set(row, i, wv);
        }
    }
    for (row, &vv) in v.iter().enumerate() {
        hm.set(row, 0, vv);
    }
    for (col, &vv) in v.iter().rev().enumerate() {
        hm.set(m - 1, col, vv);
    }

    let mut hpwr = Matrix::identity(m);
    let mut nn = n;
    let mut expnt: i32 = 0;
    let mut hexpnt: i32 = 0;
    while nn > 0 {
        if nn % 2 == 1 {
            hpwr = hpwr.mul(&hm);
            expnt += hexpnt;
        }
        hm = hm.mul(&hm);
        hexpnt *= 2;
        if hm.get(k - 1, k - 1).abs() > EP128 {
            hm.scale(1.0 / EP128);
            hexpnt += E128;
        }
        nn /= 2;
    }
    let mut p = hpwr.get(k - 1, k - 1);
    let nf = n as f64;
    for i in 1..=n {
        p = i as f64 * p / nf;
        if p.abs() < EM128 {
            p *= EP128;
            expnt -= E128;
        }
    }
    if expnt != 0 {
        p = ldexp(p, expnt);
    }
    clip(p)
}

/// A small dense square matrix for [`dmtw_cdf`].
#[derive(Clone)]
struct Matrix {
    n: usize,
    data: Vec<f64>,
}

impl Matrix {
    fn zeros(n: usize) -> Self {
        Matrix {
            n,
            data: vec![0.0; n * n],
        }
    }

    fn identity(n: usize) -> Self {
        let mut m = Self::zeros(n);
        for i in 0..n {
            m.set(i, i, 1.0);
        }
        m
    }

    fn get(&self, row: usize, col: usize) -> f64 {
        self.data
            .get(row * self.n + col)
            .copied()
            .unwrap_or(f64::NAN)
    }

    fn set(&mut self, row: usize, col: usize, value: f64) {
        if let Some(cell) = self.data.get_mut(row * self.n + col) {
            *cell = value;
        }
    }

    fn scale(&mut self, factor: f64) {
        self.data.iter_mut().for_each(|x| *x *= factor);
    }

    fn mul(&self, other: &Matrix) -> Matrix {
        let n = self.n;
        let mut out = Matrix::zeros(n);
        for i in 0..n {
            let row = &self.data[i * n..(i + 1) * n];
            let out_row = &mut out.data[i * n..(i + 1) * n];
            for (l, &a) in row.iter().enumerate() {
                if a == 0.0 {
                    continue;
                }
                let other_row = &other.data[l * n..(l + 1) * n];
                for (o, &b) in out_row.iter_mut().zip(other_row) {
                    *o += a * b;
                }
            }
        }
        out
    }
}

/// `np.ldexp(x, e)` without intermediate overflow for large `|e|`.
fn ldexp(mut x: f64, mut e: i32) -> f64 {
    const STEP: i32 = 1000;
    while e > STEP {
        x *= 2f64.powi(STEP);
        e -= STEP;
    }
    while e < -STEP {
        x *= 2f64.powi(-STEP);
        e += STEP;
    }
    x * 2f64.powi(e)
}

/// `_pomeranz_compute_j1j2`: the columns of row `i` that can be non-zero.
fn pomeranz_j1j2(i: i64, n: i64, ll: i64, ceilf: i64, roundf: i64) -> (i64, i64) {
    let (j1, j2) = if i == 0 {
        (-ll - ceilf - 1, ll + ceilf - 1)
    } else {
        let (ip1div2, ip1mod2) = ((i + 1).div_euclid(2), (i + 1).rem_euclid(2));
        if ip1mod2 == 0 {
            if ip1div2 == n + 1 {
                (n - ll - ceilf - 1, n + ll + ceilf - 1)
            } else {
                (ip1div2 - 1 - ll - roundf - 1, ip1div2 + ll - 1 + ceilf - 1)
            }
        } else {
            (ip1div2 - 1 - ll - 1, ip1div2 + ll + roundf - 1)
        }
    };
    ((j1 + 2).max(0), j2.min(n))
}

/// `_kolmogn_Pomeranz(n, x)`: `P(D_n <= x)` by Pomeranz's recursion, two rows at a time, each the
/// convolution of the previous one with near-Poisson weights. Used for `n <= 140` only.
fn pomeranz_cdf(n: u64, x: f64) -> f64 {
    pomeranz(n as i64, x).unwrap_or(f64::NAN)
}

fn pomeranz(n: i64, x: f64) -> Option<f64> {
    let t = n as f64 * x;
    let ll = t.floor() as i64;
    let f = t - ll as f64;
    let g = f.min(1.0 - f);
    let ceilf = i64::from(f > 0.0);
    let roundf = i64::from(f > 0.5);
    let npwrs = usize::try_from(2 * (ll + 1)).ok()?;
    let mut gpower = vec![0.0; npwrs];
    let mut twogpower = vec![0.0; npwrs];
    let mut onem2gpower = vec![0.0; npwrs];
    *gpower.first_mut()? = 1.0;
    twogpower[0] = 1.0;
    onem2gpower[0] = 1.0;
    let nf = n as f64;
    let (g_over_n, two_g_over_n, one_minus_two_g_over_n) =
        (g / nf, 2.0 * g / nf, (1.0 - 2.0 * g) / nf);
    for m in 1..npwrs {
        gpower[m] = gpower[m - 1] * g_over_n / m as f64;
        twogpower[m] = twogpower[m - 1] * two_g_over_n / m as f64;
        onem2gpower[m] = onem2gpower[m - 1] * one_minus_two_g_over_n / m as f64;
    }

    let mut v0 = vec![0.0; npwrs];
    let mut v1 = vec![0.0; npwrs];
    v1[0] = 1.0;
    let (mut v0s, mut v1s): (i64, i64) = (0, 0);
    let mut expnt: i32 = 0;
    let (mut j1, _) = pomeranz_j1j2(0, n, ll, ceilf, roundf);
    for i in 1..(2 * n + 2) {
        let k1 = j1;
        std::mem::swap(&mut v0, &mut v1);
        std::mem::swap(&mut v0s, &mut v1s);
        v1.fill(0.0);
        let (next_j1, j2) = pomeranz_j1j2(i, n, ll, ceilf, roundf);
        j1 = next_j1;
        let pwrs = if i == 1 || i == 2 * n + 1 {
            &gpower
        } else if i % 2 == 1 {
            &twogpower
        } else {
            &onem2gpower
        };
        let ln2 = j2 - k1 + 1;
        if ln2 > 0 {
            let start = usize::try_from(k1 - v0s).ok()?;
            let len = usize::try_from(ln2).ok()?;
            let a = slice_clamped(&v0, start, len);
            let b = slice_clamped(pwrs, 0, len);
            let conv = convolve(a, b);
            let conv_start = usize::try_from(j1 - k1).ok()?;
            let conv_len = usize::try_from(j2 - j1 + 1).ok()?;
            let src = slice_clamped(&conv, conv_start, conv_len);
            if src.len() != conv_len || conv_len > v1.len() {
                return None;
            }
            v1[..conv_len].copy_from_slice(src);
            let max = v1.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if 0.0 < max && max < EM128 {
                v1.iter_mut().for_each(|x| *x *= EP128);
                expnt -= E128;
            }
            v1s = v0s + j1 - k1;
        }
    }
    let mut ans = *v1.get(usize::try_from(n - v1s).ok()?)?;
    for m in 1..=n {
        if ans.abs() > EP128 {
            ans *= EM128;
            expnt += E128;
        }
        ans *= m as f64;
    }
    if expnt != 0 {
        ans = ldexp(ans, expnt);
    }
    Some(clip(ans))
}

/// `a[start:start + len]` with Python's clamping at the end.
fn slice_clamped(a: &[f64], start: usize, len: usize) -> &[f64] {
    let start = start.min(a.len());
    let end = start.saturating_add(len).min(a.len());
    &a[start..end]
}

/// `np.convolve(a, b)` (mode `full`).
fn convolve(a: &[f64], b: &[f64]) -> Vec<f64> {
    if a.is_empty() || b.is_empty() {
        return Vec::new();
    }
    let mut out = vec![0.0; a.len() + b.len() - 1];
    for (i, &x) in a.iter().enumerate() {
        for (j, &y) in b.iter().enumerate() {
            out[i + j] += x * y;
        }
    }
    out
}

/// `_kolmogn_PelzGood(n, x)`: the Pelz–Good approximation of `P(D_n <= x)`, the Li-Chien and
/// Korolyuk expansion transformed through Jacobi theta functions so it suits small `z = x·√n`.
fn pelz_good_cdf(n: u64, x: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let nf = n as f64;
    let z = nf.sqrt() * x;
    let (zsquared, zthree, zfour, zsix) = (z.powf(2.0), z.powf(3.0), z.powf(4.0), z.powf(6.0));
    let (pi2, pi4, pi6) = (PI.powf(2.0), PI.powf(4.0), PI.powf(6.0));
    let sqrt2pi = (2.0 * PI).sqrt();

    let qlog = -pi2 / 8.0 / zsquared;
    if qlog < MIN_LOG {
        return 0.0;
    }
    let q = qlog.exp();

    let k1a = -zsquared;
    let k1b = pi2 / 4.0;
    let k2a = 6.0 * zsix + 2.0 * zfour;
    let k2b = (2.0 * zfour - 5.0 * zsquared) * pi2 / 4.0;
    let k2c = pi4 * (1.0 - 2.0 * zsquared) / 16.0;
    let k3d = pi6 * (5.0 - 30.0 * zsquared) / 64.0;
    let k3c = pi4 * (-60.0 * zsquared + 212.0 * zfour) / 16.0;
    let k3b = pi2 * (135.0 * zfour - 96.0 * zsix) / 4.0;
    let k3a = -30.0 * zsix - 90.0 * z.powf(8.0);

    let mut k = [0.0f64; 4];
    let maxk = (16.0 * z / PI).ceil() as i64;
    for kk in (1..=maxk).rev() {
        let m = (2 * kk - 1) as f64;
        let (msquared, mfour, msix) = (m * m, m.powi(4), m.powi(6));
        let qpower = q.powf(8.0 * kk as f64);
        let coeffs = [
            1.0,
            k1a + k1b * msquared,
            k2a + k2b * msquared + k2c * mfour,
            k3a + k3b * msquared + k3c * mfour + k3d * msix,
        ];
        for (acc, c) in k.iter_mut().zip(coeffs) {
            *acc = *acc * qpower + c;
        }
    }
    let divisors = [z, 6.0 * zfour, 72.0 * z.powf(7.0), 6480.0 * z.powf(10.0)];
    for (acc, div) in k.iter_mut().zip(divisors) {
        *acc = *acc * q * sqrt2pi / div;
    }

    let q = (-pi2 / 2.0 / zsquared).exp();
    let sqrt3z = 3f64.sqrt() * z;
    let (mut k2extra, mut k3extra) = (0.0, 0.0);
    for kk in (1..=maxk).rev() {
        let ks = kk as f64;
        let ksquared = ks * ks;
        let qpwer = q.powf(ksquared);
        k2extra += ksquared * qpwer;
        let kspi = PI * ks;
        k3extra += (sqrt3z + kspi) * (sqrt3z - kspi) * ksquared * qpwer;
    }
    k[2] += k2extra * (pi2 * sqrt2pi / (-36.0 * zthree));
    k[3] += k3extra * (pi2 * sqrt2pi / (216.0 * zsix));
    for (i, acc) in k.iter_mut().enumerate() {
        *acc /= nf.powf(i as f64 / 2.0);
    }
    k.iter().sum()
}

/// `scipy.special.smirnov(n, x)`: the one-sided `P(D_n^+ >= x)`, by the Birnbaum–Tingey sum
/// `x · Σ_{v=0}^{⌊n(1−x)⌋} C(n, v) (x + v/n)^{v−1} (1 − x − v/n)^{n−v}` with the special
/// cases of `xsf::cephes::_smirnov`.
///
/// xsf evaluates the terms in double-double; here each term is evaluated in logarithms (the
/// binomial coefficient kept as a mantissa and a binary exponent, as xsf does), which keeps every
/// term — all are positive — to about `1e-12` relative for the sample sizes a window has. xsf's
/// alternative "upper sum" is only chosen when `x <= 0.5/√n`, which `kstwo` never asks for
/// (it calls `smirnov` only for `n·x² >= 2.2` or `x >= 0.5`), so it is not ported.
fn smirnov_sf(n: u64, x: f64) -> f64 {
    if !(n > 0 && (0.0..=1.0).contains(&x)) {
        return f64::NAN;
    }
    if n == 1 {
        return 1.0 - x;
    }
    if x == 0.0 {
        return 1.0;
    }
    if x == 1.0 {
        return 0.0;
    }
    let nf = n as f64;
    let (nxfl, alpha) = floor_nx(nf, x);
    // x <= 1/n.
    if nxfl == 0 || (nxfl == 1 && alpha == 0.0) {
        let t = ((nf - 1.0) * x.ln_1p()).exp();
        return 1.0 - x * t;
    }
    if -2.0 * nf * x * x < MINLOG {
        return 0.0;
    }
    if nxfl >= n - 1 {
        return (nf * (-x).ln_1p()).exp();
    }
    if n > 1_000_000 {
        let logp = -(6.0 * nf * x + 1.0).powi(2) / 18.0 / nf;
        // Maximise precision for small p-values: the sf directly, or 1 − cdf with cdf = −expm1.
        return if logp < -std::f64::consts::LN_2 {
            logp.exp()
        } else {
            1.0 + logp.exp_m1()
        };
    }
    smirnov_lower_sum(n, x, nxfl)
}

/// `floor(n·x)` and its remainder, exactly (xsf's `modNX` does this in double-double; an FMA gives
/// the rounding error of the product).
fn floor_nx(n: f64, x: f64) -> (u64, f64) {
    let hi = n * x;
    let lo = n.mul_add(x, -hi);
    let mut fl = hi.floor();
    let mut alpha = (hi - fl) + lo;
    if alpha < 0.0 {
        fl -= 1.0;
        alpha += 1.0;
    }
    if alpha >= 1.0 {
        fl += 1.0;
        alpha = 0.0;
    }
    (fl.max(0.0) as u64, alpha)
}

/// The Birnbaum–Tingey lower sum of `smirnov_sf`, with xsf's early exit once the remaining terms
/// cannot change the sum.
fn smirnov_lower_sum(n: u64, x: f64, nxfl: u64) -> f64 {
    let nf = n as f64;
    // v runs over 0 ..= n − ⌊nx⌋ − 1; the last term with 1 − x − v/n == 0 would be 0 anyway.
    let n_terms = n - nxfl;
    let vmid = n / 2;
    // C(n, v) = c_man · 2^c_exp, with c_man in [0.5, 1).
    let (mut c_man, mut c_exp) = (1.0f64, 0i64);
    let mut sum = 0.0f64;
    for v in 0..n_terms {
        let vf = v as f64;
        let t1x = vf / nf + x;
        let log_t1 = (vf - 1.0) * t1x.ln();
        let log_t2 = if t1x < 0.5 {
            (nf - vf) * (-t1x).ln_1p()
        } else {
            let t2x = (nf - vf) / nf - x;
            if t2x <= 0.0 {
                f64::NEG_INFINITY
            } else {
                (nf - vf) * t2x.ln()
            }
        };
        let log_c = c_man.ln() + c_exp as f64 * std::f64::consts::LN_2;
        let term = (log_c + log_t1 + log_t2).exp();
        if term.is_finite() {
            sum += term;
        }
        if term != 0.0 {
            if 4.0 * (n_terms - v) as f64 * term.abs() < f64::EPSILON * sum && v != n_terms - 1 {
                break;
            }
        } else if v > vmid {
            break;
        }
        // C(n, v + 1) = C(n, v) · (n − v) / (v + 1), renormalized.
        let (man, exp) = frexp(c_man * ((nf - vf) / (vf + 1.0)));
        c_man = man;
        c_exp += exp as i64;
    }
    (x * sum).clamp(0.0, 1.0)
}

/// `frexp`: `x = man · 2^exp` with `|man|` in `[0.5, 1)` (for finite non-zero `x`), read off the
/// bits so that it is exact.
fn frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || !x.is_finite() {
        return (x, 0);
    }
    // Subnormals: scale into the normal range first.
    let (x, bias) = if x.abs() < f64::MIN_POSITIVE {
        (x * 2f64.powi(54), -54)
    } else {
        (x, 0)
    };
    let bits = x.to_bits();
    let biased = ((bits >> 52) & 0x7ff) as i32;
    let man = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (man, biased - 1022 + bias)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_edges() {
        assert_eq!(kstwo_sf(0.0, 10), 1.0);
        assert_eq!(kstwo_sf(1.0, 10), 0.0);
        assert!(kstwo_sf(0.5, 0).is_nan());
        assert!(kstwo_sf(f64::NAN, 3).is_nan());
    }

    #[test]
    fn smirnov_for_one_observation() {
        assert_eq!(smirnov_sf(1, 0.25), 0.75);
    }

    #[test]
    fn frexp_normalizes() {
        for x in [1.0, 0.5, 3.0, 1e-300, 7.5e300] {
            let (m, e) = frexp(x);
            assert!((0.5..1.0).contains(&m), "{x}");
            assert_eq!(m * 2f64.powi(e), x);
        }
    }
}
