// Compiled CPU tile rasterizer of flow3d: gsplat 1.5.3's compositing rules, per-tile forward and backward.
//
// The maths is the one of flow3d/render/tile_raster.py (the readable PyTorch reference) and of gsplat's
// CUDA kernels rasterize_to_pixels_3dgs_{fwd,bwd}: pixel (i, j) is sampled at (j + 0.5, i + 0.5);
// sigma = 0.5 (A dx^2 + C dy^2) + B dx dy with d = mean2d - pixel and (A, B, C) the conic;
// alpha = min(0.999, opacity exp(-sigma)); a pair is skipped when sigma < 0 or alpha < 1/255; a pixel
// stops before the first Gaussian that would bring its transmittance T to <= 1e-4 (exclusive).
//
// How it runs: one OpenMP task per tile (dynamic schedule; the caller orders tiles longest list first),
// a tile's pixel state in per-thread buffers (no allocation inside the loops). Each Gaussian only visits
// the pixels of its opacity-aware ellipse sigma <= ln(255 opacity) (rows and per-row column spans solved
// conservatively in double precision, then the exact per-pixel rules decide), and a tile stops
// once all its pixels have terminated. The backward pass walks each tile's list back to front and
// recovers the transmittance before each Gaussian as T / (1 - alpha) (gsplat's scheme: alpha is
// recomputed bit for bit, and 1 - alpha >= 0.001). Gradients are written once per (Gaussian, tile)
// into a per-intersection buffer and summed per Gaussian in intersection order: no atomics, so results
// are bit-identical from run to run and for any number of threads.
//
// Compiled with -ffp-contract=off: no fused multiply-adds, so the forward and the backward compute the
// same alpha for the same pair whatever the inlining context.

#include "raster_kernels.h"

#ifdef _OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace flow3d_raster {

template <typename scalar_t>
struct Rules {
    static constexpr scalar_t max_alpha = scalar_t(0.999);
    static constexpr scalar_t alpha_threshold = scalar_t(1.0) / scalar_t(255.0);
    static constexpr scalar_t t_eps = scalar_t(1e-4);
};

// Pixels of one tile that lie inside the image.
struct Tile {
    int64_t image;  // image index
    int x0, y0;     // top-left pixel of the tile (global)
    int w, h;       // pixels of the tile inside the image
};

inline Tile tile_of(int64_t gtile, int tile_size, int tile_width, int tile_height, int width, int height) {
    const int64_t per_image = int64_t(tile_width) * tile_height;
    Tile t;
    t.image = gtile / per_image;
    const int64_t local = gtile % per_image;
    t.x0 = int(local % tile_width) * tile_size;
    t.y0 = int(local / tile_width) * tile_size;
    t.w = std::min(tile_size, width - t.x0);
    t.h = std::min(tile_size, height - t.y0);
    return t;
}

// Conservative pixel spans of {sigma <= ln(255 opacity)} (where alpha >= 1/255 can hold) inside a tile,
// solved in double precision. The level gets slack for the rounding of sigma in scalar_t: sigma's
// computed value is within ~4 eps (A dx^2 + C dy^2) of the exact one, and A dx^2 + C dy^2 <=
// 2 sigma (A + C) / lambda_min on the ellipse, so the level is raised by 16 eps L (A + C) / lambda_min
// (plus 1e-4 for exp and the product with the opacity); pixels outside the spans cannot pass gsplat's
// alpha test. Conics that are not positive definite (or not finite) get the whole tile, where the exact
// per-pixel rules decide.
struct Spans {
    bool whole;
    double mx, my, A, B, det, L;
    int y_lo, y_hi;  // tile-local rows [y_lo, y_hi)
};

constexpr double kSpanMargin = 1e-4;  // pixels, on top of the level's slack

inline double clamp_coord(double v) { return std::min(std::max(v, -1e9), 1e9); }

// Returns false when no pixel of the tile can receive this Gaussian. eps: the machine epsilon of the
// type sigma is computed in.
inline bool spans_init(Spans& s, double mx, double my, double A, double B, double C, double opacity, double eps,
                       bool whole_tile, const Tile& t) {
    double L = std::log(255.0 * opacity);
    if (L < -1e-4) return false;  // opacity < 1/255: alpha < 1/255 everywhere
    const double det = A * C - B * B;
    s.whole = whole_tile || !(A > 0.0 && det > 0.0 && std::isfinite(A) && std::isfinite(C) && std::isfinite(det) &&
                              std::isfinite(mx) && std::isfinite(my) && std::isfinite(B) && std::isfinite(L));
    if (s.whole) {
        s.y_lo = 0;
        s.y_hi = t.h;
        return t.h > 0 && t.w > 0;
    }
    L = std::max(L, 0.0);
    const double half_tr = 0.5 * (A + C);
    const double lambda_min = det / (half_tr + std::sqrt(std::max(half_tr * half_tr - det, 0.0)));
    L += 1e-4 + 16.0 * eps * L * (A + C) / lambda_min;
    s.mx = mx;
    s.my = my;
    s.A = A;
    s.B = B;
    s.det = det;
    s.L = L;
    // min over dx of sigma at offset dy is dy^2 det / (2 A): rows with |dy| <= sqrt(2 A L / det)
    const double half = std::sqrt(2.0 * A * L / det);
    const double lo = std::ceil(clamp_coord(my - half - 0.5 - kSpanMargin)) - t.y0;
    const double hi = std::floor(clamp_coord(my + half - 0.5 + kSpanMargin)) + 1.0 - t.y0;  // exclusive
    s.y_lo = int(std::max(lo, 0.0));
    s.y_hi = int(std::min(hi, double(t.h)));
    return s.y_lo < s.y_hi;
}

// Columns [x_lo, x_hi) (tile-local) of tile-local row y.
inline void spans_row(const Spans& s, int y, const Tile& t, int& x_lo, int& x_hi) {
    if (s.whole) {
        x_lo = 0;
        x_hi = t.w;
        return;
    }
    const double dy = s.my - (double(t.y0 + y) + 0.5);
    const double disc = 2.0 * s.A * s.L - s.det * dy * dy;
    if (disc < 0.0) {  // the row misses the ellipse (rows are a superset)
        x_lo = x_hi = 0;
        return;
    }
    const double r = std::sqrt(disc);
    // sigma <= L for dx in [(-B dy - r) / A, (-B dy + r) / A]; the pixel centre is px = mx - dx
    const double px_lo = s.mx - (-s.B * dy + r) / s.A;
    const double px_hi = s.mx - (-s.B * dy - r) / s.A;
    const double lo = std::ceil(clamp_coord(px_lo - 0.5 - kSpanMargin)) - t.x0;
    const double hi = std::floor(clamp_coord(px_hi - 0.5 + kSpanMargin)) + 1.0 - t.x0;
    x_lo = int(std::max(lo, 0.0));
    x_hi = int(std::min(hi, double(t.w)));
}

// Gaussians are read in depth order, scattered over the tables: prefetch a few list entries ahead.
constexpr int64_t kPrefetch = 4;

template <typename scalar_t>
inline void prefetch_gaussian(int64_t g, const scalar_t* means2d, const scalar_t* conics, const scalar_t* opacities,
                              const scalar_t* colors, int64_t D) {
    __builtin_prefetch(means2d + 2 * g);
    __builtin_prefetch(conics + 3 * g);
    __builtin_prefetch(opacities + g);
    __builtin_prefetch(colors + g * D);
}

// One pair's alpha with gsplat's rules; returns false when the pair is skipped. vis = exp(-sigma).
template <typename scalar_t>
inline bool pair_alpha(scalar_t dx, scalar_t dy, scalar_t A, scalar_t B, scalar_t C, scalar_t opacity,
                       scalar_t& vis, scalar_t& alpha) {
    const scalar_t sigma = scalar_t(0.5) * (A * dx * dx + C * dy * dy) + B * dx * dy;
    if (sigma < scalar_t(0)) return false;
    vis = std::exp(-sigma);
    alpha = std::min(Rules<scalar_t>::max_alpha, opacity * vis);
    return !(alpha < Rules<scalar_t>::alpha_threshold);
}


template <typename scalar_t>
void forward_kernel(const Problem& pb, const scalar_t* means2d, const scalar_t* conics, const scalar_t* opacities,
                    const scalar_t* colors, scalar_t* out_colors, scalar_t* out_T, int32_t* out_last) {
    const int ts = pb.tile_size, P = ts * ts;
    const double kEps = std::numeric_limits<scalar_t>::epsilon();
    const int64_t D = pb.D, HW = int64_t(pb.width) * pb.height;
#pragma omp parallel num_threads(std::max(1, pb.n_threads))
    {
        std::vector<scalar_t> T(P), acc(P * D);
        std::vector<int32_t> last(P);
        std::vector<uint8_t> done(P);
#pragma omp for schedule(dynamic, 1)
        for (int64_t ti = 0; ti < pb.n_tiles; ++ti) {
            const Tile t = tile_of(pb.tile_ids[ti], ts, pb.tile_width, pb.tile_height, pb.width, pb.height);
            std::fill(T.begin(), T.end(), scalar_t(1));
            std::fill(acc.begin(), acc.end(), scalar_t(0));
            std::fill(last.begin(), last.end(), 0);
            std::fill(done.begin(), done.end(), uint8_t(0));
            int alive = t.w * t.h;
            const int64_t start = pb.starts[ti], count = pb.counts[ti];
            for (int64_t k = 0; k < count && alive > 0; ++k) {
                if (k + kPrefetch < count)
                    prefetch_gaussian(pb.flat_ids[start + k + kPrefetch], means2d, conics, opacities, colors, D);
                const int64_t g = pb.flat_ids[start + k];
                const scalar_t mx = means2d[2 * g], my = means2d[2 * g + 1];
                const scalar_t A = conics[3 * g], B = conics[3 * g + 1], C = conics[3 * g + 2];
                const scalar_t op = opacities[g];
                Spans s;
                if (!spans_init(s, mx, my, A, B, C, op, kEps, pb.whole_tiles, t)) continue;
                const scalar_t* c = colors + g * D;
                for (int y = s.y_lo; y < s.y_hi; ++y) {
                    int x_lo, x_hi;
                    spans_row(s, y, t, x_lo, x_hi);
                    const scalar_t dy = my - (scalar_t(t.y0 + y) + scalar_t(0.5));
                    for (int x = x_lo; x < x_hi; ++x) {
                        const int p = y * ts + x;
                        if (done[p]) continue;
                        const scalar_t dx = mx - (scalar_t(t.x0 + x) + scalar_t(0.5));
                        scalar_t vis, alpha;
                        if (!pair_alpha(dx, dy, A, B, C, op, vis, alpha)) continue;
                        const scalar_t next_T = T[p] * (scalar_t(1) - alpha);
                        if (next_T <= Rules<scalar_t>::t_eps) {  // this pixel is done: exclusive
                            done[p] = 1;
                            --alive;
                            continue;
                        }
                        const scalar_t w = alpha * T[p];
                        scalar_t* a = &acc[int64_t(p) * D];
                        for (int64_t d = 0; d < D; ++d) a[d] += w * c[d];
                        T[p] = next_T;
                        last[p] = int32_t(k + 1);
                    }
                }
            }
            for (int y = 0; y < t.h; ++y) {
                for (int x = 0; x < t.w; ++x) {
                    const int p = y * ts + x;
                    const int64_t pix = t.image * HW + int64_t(t.y0 + y) * pb.width + (t.x0 + x);
                    out_T[pix] = T[p];
                    out_last[pix] = last[p];
                    std::copy(&acc[int64_t(p) * D], &acc[int64_t(p) * D] + D, out_colors + pix * D);
                }
            }
        }
    }
}

// Per-intersection gradient rows: (dmx, dmy, dA, dB, dC, dopacity, dcolor[D]) and, with absgrad,
// (|dmx|, |dmy|) summed over pixels.
template <typename scalar_t>
void backward_kernel(const Problem& pb, const scalar_t* means2d, const scalar_t* conics, const scalar_t* opacities,
                     const scalar_t* colors, const scalar_t* T_final, const int32_t* last_in,
                     const scalar_t* v_colors, const scalar_t* v_T, scalar_t* g_rows, scalar_t* g_abs) {
    const int ts = pb.tile_size, P = ts * ts;
    const double kEps = std::numeric_limits<scalar_t>::epsilon();
    const int64_t D = pb.D, HW = int64_t(pb.width) * pb.height, R = 6 + D;
#pragma omp parallel num_threads(std::max(1, pb.n_threads))
    {
        std::vector<scalar_t> T(P), S(P), G(P * D), gcol(D);
        std::vector<int32_t> last(P);
#pragma omp for schedule(dynamic, 1)
        for (int64_t ti = 0; ti < pb.n_tiles; ++ti) {
            const Tile t = tile_of(pb.tile_ids[ti], ts, pb.tile_width, pb.tile_height, pb.width, pb.height);
            std::fill(last.begin(), last.end(), 0);
            int32_t k_end = 0;
            for (int y = 0; y < t.h; ++y) {
                for (int x = 0; x < t.w; ++x) {
                    const int p = y * ts + x;
                    const int64_t pix = t.image * HW + int64_t(t.y0 + y) * pb.width + (t.x0 + x);
                    T[p] = T_final[pix];
                    // S = sum over the Gaussians behind of (G . c_j) w_j, plus T_final dL/dT_final
                    S[p] = T_final[pix] * v_T[pix];
                    std::copy(v_colors + pix * D, v_colors + pix * D + D, &G[int64_t(p) * D]);
                    last[p] = last_in[pix];
                    k_end = std::max(k_end, last[p]);
                }
            }
            const int64_t start = pb.starts[ti], count = pb.counts[ti];
            std::fill(g_rows + (start + k_end) * R, g_rows + (start + count) * R, scalar_t(0));
            if (g_abs != nullptr) std::fill(g_abs + (start + k_end) * 2, g_abs + (start + count) * 2, scalar_t(0));
            for (int64_t k = int64_t(k_end) - 1; k >= 0; --k) {
                if (k >= kPrefetch)
                    prefetch_gaussian(pb.flat_ids[start + k - kPrefetch], means2d, conics, opacities, colors, D);
                const int64_t g = pb.flat_ids[start + k];
                const scalar_t mx = means2d[2 * g], my = means2d[2 * g + 1];
                const scalar_t A = conics[3 * g], B = conics[3 * g + 1], C = conics[3 * g + 2];
                const scalar_t op = opacities[g];
                const scalar_t* c = colors + g * D;
                scalar_t gmx = 0, gmy = 0, gA = 0, gB = 0, gC = 0, gop = 0, ax = 0, ay = 0;
                std::fill(gcol.begin(), gcol.end(), scalar_t(0));
                Spans s;
                const bool any = spans_init(s, mx, my, A, B, C, op, kEps, pb.whole_tiles, t);
                for (int y = any ? s.y_lo : 0; any && y < s.y_hi; ++y) {
                    int x_lo, x_hi;
                    spans_row(s, y, t, x_lo, x_hi);
                    const scalar_t dy = my - (scalar_t(t.y0 + y) + scalar_t(0.5));
                    for (int x = x_lo; x < x_hi; ++x) {
                        const int p = y * ts + x;
                        if (k >= last[p]) continue;
                        const scalar_t dx = mx - (scalar_t(t.x0 + x) + scalar_t(0.5));
                        scalar_t vis, alpha;
                        if (!pair_alpha(dx, dy, A, B, C, op, vis, alpha)) continue;
                        const scalar_t ra = scalar_t(1) / (scalar_t(1) - alpha);
                        T[p] *= ra;  // transmittance before this Gaussian
                        const scalar_t w = alpha * T[p];
                        const scalar_t* Gp = &G[int64_t(p) * D];
                        scalar_t Gc = 0;
                        for (int64_t d = 0; d < D; ++d) {
                            Gc += Gp[d] * c[d];
                            gcol[d] += w * Gp[d];
                        }
                        // dL/dalpha = T G.c - (sum behind + T_final dL/dT_final) / (1 - alpha)
                        const scalar_t v_alpha = T[p] * Gc - S[p] * ra;
                        S[p] += Gc * w;
                        if (op * vis <= Rules<scalar_t>::max_alpha) {  // not clamped at 0.999
                            const scalar_t v_sigma = -op * vis * v_alpha;
                            gA += scalar_t(0.5) * v_sigma * dx * dx;
                            gB += v_sigma * dx * dy;
                            gC += scalar_t(0.5) * v_sigma * dy * dy;
                            const scalar_t vx = v_sigma * (A * dx + B * dy);
                            const scalar_t vy = v_sigma * (B * dx + C * dy);
                            gmx += vx;
                            gmy += vy;
                            ax += std::abs(vx);
                            ay += std::abs(vy);
                            gop += vis * v_alpha;
                        }
                    }
                }
                scalar_t* row = g_rows + (start + k) * R;
                row[0] = gmx;
                row[1] = gmy;
                row[2] = gA;
                row[3] = gB;
                row[4] = gC;
                row[5] = gop;
                std::copy(gcol.begin(), gcol.end(), row + 6);
                if (g_abs != nullptr) {
                    g_abs[(start + k) * 2] = ax;
                    g_abs[(start + k) * 2 + 1] = ay;
                }
            }
        }
    }
}

// out[flat_ids[m]] += rows[m] for every intersection m, summed in increasing m for each output row.
template <typename scalar_t>
void reduce_rows(const scalar_t* rows, int64_t width, const int64_t* flat_ids, int64_t M, int64_t n_out,
                 int n_threads, scalar_t* out) {
    std::vector<int64_t> offsets(n_out + 1, 0), order(M);
    for (int64_t m = 0; m < M; ++m) ++offsets[flat_ids[m] + 1];
    for (int64_t i = 0; i < n_out; ++i) offsets[i + 1] += offsets[i];
    std::vector<int64_t> cursor(offsets.begin(), offsets.end() - 1);
    for (int64_t m = 0; m < M; ++m) order[cursor[flat_ids[m]]++] = m;
#pragma omp parallel for schedule(static) num_threads(std::max(1, n_threads))
    for (int64_t i = 0; i < n_out; ++i) {
        scalar_t* o = out + i * width;
        for (int64_t j = offsets[i]; j < offsets[i + 1]; ++j) {
            const scalar_t* r = rows + order[j] * width;
            for (int64_t c = 0; c < width; ++c) o[c] += r[c];
        }
    }
}


template void forward_kernel<float>(const Problem&, const float*, const float*, const float*, const float*, float*,
                                    float*, int32_t*);
template void forward_kernel<double>(const Problem&, const double*, const double*, const double*, const double*,
                                     double*, double*, int32_t*);
template void backward_kernel<float>(const Problem&, const float*, const float*, const float*, const float*,
                                     const float*, const int32_t*, const float*, const float*, float*, float*);
template void backward_kernel<double>(const Problem&, const double*, const double*, const double*, const double*,
                                      const double*, const int32_t*, const double*, const double*, double*, double*);
template void reduce_rows<float>(const float*, int64_t, const int64_t*, int64_t, int64_t, int, float*);
template void reduce_rows<double>(const double*, int64_t, const int64_t*, int64_t, int64_t, int, double*);

}  // namespace flow3d_raster
