// EWA projection and tile lists of the compiled CPU rasterizer (the maths of flow3d/render/projection.py
// and of build_tile_plan in flow3d/render/tile_raster.py, which are the readable references).
//
// Projection (pinhole, gsplat 1.5.3's projection_ewa_3dgs_fused): covariance R S S^T R^T from a
// normalised wxyz quaternion and scales; camera-space mean and covariance; the perspective Jacobian with
// x/z and y/z clamped to 1.3 x the half field of view; eps2d added to the 2D covariance; conic = its
// inverse; opacity-aware radii. Culled entries (depth outside [near, far], non-positive determinant,
// opacity < 1/255, radii <= radius_clip or off-image) get radii 0 and finite values. The backward pass
// is the chain rule of the same formulas (no gradient to the cameras).

#include "raster_kernels.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

namespace flow3d_raster {

namespace {

template <typename T>
struct M3 {
    T m[3][3];
};

template <typename T>
inline M3<T> quat_to_rot(T w, T x, T y, T z) {
    M3<T> R;
    R.m[0][0] = 1 - 2 * (y * y + z * z);
    R.m[0][1] = 2 * (x * y - w * z);
    R.m[0][2] = 2 * (x * z + w * y);
    R.m[1][0] = 2 * (x * y + w * z);
    R.m[1][1] = 1 - 2 * (x * x + z * z);
    R.m[1][2] = 2 * (y * z - w * x);
    R.m[2][0] = 2 * (x * z - w * y);
    R.m[2][1] = 2 * (y * z + w * x);
    R.m[2][2] = 1 - 2 * (x * x + y * y);
    return R;
}

// Everything the forward computes for one (camera, Gaussian) pair that the backward needs again.
template <typename T>
struct Proj {
    T q[4], qnorm;      // normalised quaternion and the raw norm
    M3<T> Rq, M, S3;    // rotation, M = Rq diag(s), world covariance
    M3<T> Rc;           // camera rotation
    T p[3];             // camera-space mean
    M3<T> Sc;           // camera-space covariance
    bool depth_ok, valid;
    T zs, u, v;         // safe z and the clamped x/z, y/z
    bool u_clamped, v_clamped;
    T J[2][3];
    T c00, c01, c11, a, c, det, det_orig, det_s;
};

template <typename T>
inline void project_one(const T* mean, const T* quat, const T* scale, const T* viewmat, const T* K, int width,
                        int height, T eps2d, T near_plane, T far_plane, Proj<T>& P) {
    const T qn = std::sqrt(quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3]);
    P.qnorm = qn;
    const T inv = T(1) / std::max(qn, T(1e-12));  // F.normalize's eps
    for (int i = 0; i < 4; ++i) P.q[i] = quat[i] * inv;
    P.Rq = quat_to_rot(P.q[0], P.q[1], P.q[2], P.q[3]);
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) P.M.m[i][j] = P.Rq.m[i][j] * scale[j];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
            T s = 0;
            for (int k = 0; k < 3; ++k) s += P.M.m[i][k] * P.M.m[j][k];
            P.S3.m[i][j] = s;
        }
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) P.Rc.m[i][j] = viewmat[i * 4 + j];
    for (int i = 0; i < 3; ++i)
        P.p[i] = P.Rc.m[i][0] * mean[0] + P.Rc.m[i][1] * mean[1] + P.Rc.m[i][2] * mean[2] + viewmat[i * 4 + 3];
    M3<T> RS;  // Rc S3
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) RS.m[i][j] = P.Rc.m[i][0] * P.S3.m[0][j] + P.Rc.m[i][1] * P.S3.m[1][j] + P.Rc.m[i][2] * P.S3.m[2][j];
    for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) P.Sc.m[i][j] = RS.m[i][0] * P.Rc.m[j][0] + RS.m[i][1] * P.Rc.m[j][1] + RS.m[i][2] * P.Rc.m[j][2];

    const T x = P.p[0], y = P.p[1], z = P.p[2];
    P.depth_ok = z >= near_plane && z <= far_plane;
    P.zs = P.depth_ok ? z : T(1);
    const T fx = K[0], fy = K[4], cx = K[2], cy = K[5];
    const T tan_fovx = T(0.5) * T(width) / fx, tan_fovy = T(0.5) * T(height) / fy;
    const T lim_x_pos = (T(width) - cx) / fx + T(0.3) * tan_fovx, lim_x_neg = cx / fx + T(0.3) * tan_fovx;
    const T lim_y_pos = (T(height) - cy) / fy + T(0.3) * tan_fovy, lim_y_neg = cy / fy + T(0.3) * tan_fovy;
    const T ux = x / P.zs, vy = y / P.zs;
    P.u = std::min(std::max(ux, -lim_x_neg), lim_x_pos);
    P.v = std::min(std::max(vy, -lim_y_neg), lim_y_pos);
    P.u_clamped = !(ux > -lim_x_neg && ux < lim_x_pos);
    P.v_clamped = !(vy > -lim_y_neg && vy < lim_y_pos);
    const T tx = P.zs * P.u, ty = P.zs * P.v;
    const T rz = T(1) / P.zs;
    P.J[0][0] = fx * rz;
    P.J[0][1] = 0;
    P.J[0][2] = -fx * tx * rz * rz;
    P.J[1][0] = 0;
    P.J[1][1] = fy * rz;
    P.J[1][2] = -fy * ty * rz * rz;
    T JS[2][3];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 3; ++j) JS[i][j] = P.J[i][0] * P.Sc.m[0][j] + P.J[i][1] * P.Sc.m[1][j] + P.J[i][2] * P.Sc.m[2][j];
    T cov[2][2];
    for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) cov[i][j] = JS[i][0] * P.J[j][0] + JS[i][1] * P.J[j][1] + JS[i][2] * P.J[j][2];
    P.c00 = cov[0][0];
    P.c11 = cov[1][1];
    P.c01 = T(0.5) * (cov[0][1] + cov[1][0]);
    P.det_orig = P.c00 * P.c11 - P.c01 * P.c01;
    P.a = P.c00 + eps2d;
    P.c = P.c11 + eps2d;
    P.det = P.a * P.c - P.c01 * P.c01;
    P.valid = P.depth_ok && P.det > 0;
    P.det_s = P.valid ? P.det : T(1);
}

}  // namespace

template <typename T>
void project_forward(const ProjectProblem& pp, const T* means, const T* quats, const T* scales, const T* opacities,
                     const T* viewmats, const T* Ks, T* means2d, T* conics, T* depths, int32_t* radii, T* opac_out,
                     T* comp_out) {
    const int64_t C = pp.C, N = pp.N;
    const T eps2d = T(pp.eps2d), near_plane = T(pp.near_plane), far_plane = T(pp.far_plane);
    const T thr = T(1.0 / 255.0), max_extend = T(3.33);
#pragma omp parallel for schedule(static) num_threads(std::max(1, pp.n_threads))
    for (int64_t cn = 0; cn < C * N; ++cn) {
        const int64_t c = cn / N, n = cn % N;
        const T* K = Ks + c * 9;
        Proj<T> P;
        project_one(means + 3 * n, quats + 4 * n, scales + 3 * n, viewmats + c * 16, K, pp.width, pp.height, eps2d,
                    near_plane, far_plane, P);
        const T rz = T(1) / P.zs;
        const T mx = K[0] * P.p[0] * rz + K[2], my = K[4] * P.p[1] * rz + K[5];
        means2d[2 * cn] = mx;
        means2d[2 * cn + 1] = my;
        conics[3 * cn] = P.c / P.det_s;
        conics[3 * cn + 1] = -P.c01 / P.det_s;
        conics[3 * cn + 2] = P.a / P.det_s;
        depths[cn] = P.p[2];
        T op = opacities[pp.opacities_per_camera ? cn : n];
        T comp = T(1);
        if (pp.antialiased) {
            const T ratio = std::max(P.det_orig / P.det_s, T(0));
            comp = ratio > 0 ? std::sqrt(ratio) : T(0);
            op = op * comp;
        }
        opac_out[cn] = op;
        comp_out[cn] = comp;
        bool keep = P.valid && op >= thr;
        T rx = 0, ry = 0;
        if (keep) {
            const T extend = std::min(std::sqrt(T(2) * std::max(std::log(op / thr), T(0))), max_extend);
            rx = std::ceil(extend * std::sqrt(std::max(P.a, T(0))));
            ry = std::ceil(extend * std::sqrt(std::max(P.c, T(0))));
            keep = (rx > T(pp.radius_clip) || ry > T(pp.radius_clip)) && mx + rx > 0 && mx - rx < T(pp.width) &&
                   my + ry > 0 && my - ry < T(pp.height);
        }
        radii[2 * cn] = keep ? int32_t(rx) : 0;
        radii[2 * cn + 1] = keep ? int32_t(ry) : 0;
    }
}

// Gradients of (means2d, conics, depths, opacities) -> means, quats, scales, opacities. Per-camera rows
// are written to (C, N, .) buffers and summed over cameras in camera order (deterministic).
template <typename T>
void project_backward(const ProjectProblem& pp, const T* means, const T* quats, const T* scales, const T* opacities,
                      const T* viewmats, const T* Ks, const T* v_means2d, const T* v_conics, const T* v_depths,
                      const T* v_opac, T* g_means, T* g_quats, T* g_scales, T* g_opac) {
    const int64_t C = pp.C, N = pp.N;
    const T eps2d = T(pp.eps2d), near_plane = T(pp.near_plane), far_plane = T(pp.far_plane);
    std::vector<T> rows(C * N * 11);  // per (camera, Gaussian): dmean 3, dquat 4, dscale 3, dopacity 1
#pragma omp parallel for schedule(static) num_threads(std::max(1, pp.n_threads))
    for (int64_t cn = 0; cn < C * N; ++cn) {
        const int64_t c = cn / N, n = cn % N;
        const T* K = Ks + c * 9;
        const T fx = K[0], fy = K[4];
        Proj<T> P;
        project_one(means + 3 * n, quats + 4 * n, scales + 3 * n, viewmats + c * 16, K, pp.width, pp.height, eps2d,
                    near_plane, far_plane, P);
        T* row = rows.data() + cn * 11;
        const T o = opacities[pp.opacities_per_camera ? cn : n];
        // opacity (and the antialiasing compensation)
        T v_det_orig = 0, v_det_s = 0;
        if (pp.antialiased) {
            const T ratio = std::max(P.det_orig / P.det_s, T(0));
            const T comp = ratio > 0 ? std::sqrt(ratio) : T(0);
            row[10] = v_opac[cn] * comp;
            if (ratio > 0) {
                const T v_ratio = v_opac[cn] * o * T(0.5) / comp;
                v_det_orig = v_ratio / P.det_s;
                if (P.valid) v_det_s = -v_ratio * P.det_orig / (P.det_s * P.det_s);
            }
        } else {
            row[10] = v_opac[cn];
        }
        // conics
        const T vA = v_conics[3 * cn], vB = v_conics[3 * cn + 1], vC = v_conics[3 * cn + 2];
        T v_a = vC / P.det_s, v_c = vA / P.det_s, v_c01 = -vB / P.det_s;
        if (P.valid) v_det_s += (-vA * P.c + vB * P.c01 - vC * P.a) / (P.det_s * P.det_s);
        const T v_det = P.valid ? v_det_s : T(0);
        v_a += v_det * P.c;
        v_c += v_det * P.a;
        v_c01 += -2 * P.c01 * v_det;
        T v_c00 = v_a + v_det_orig * P.c11;
        T v_c11 = v_c + v_det_orig * P.c00;
        v_c01 += -2 * P.c01 * v_det_orig;
        const T V[2][2] = {{v_c00, T(0.5) * v_c01}, {T(0.5) * v_c01, v_c11}};
        // cov2d = J Sc J^T: v_J = V J Sc^T + V^T J Sc = 2 V J Sc (V, Sc symmetric); v_Sc = J^T V J
        T VJ[2][3];
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 3; ++j) VJ[i][j] = V[i][0] * P.J[0][j] + V[i][1] * P.J[1][j];
        T v_J[2][3];
        for (int i = 0; i < 2; ++i)
            for (int j = 0; j < 3; ++j)
                v_J[i][j] = 2 * (VJ[i][0] * P.Sc.m[0][j] + VJ[i][1] * P.Sc.m[1][j] + VJ[i][2] * P.Sc.m[2][j]);
        M3<T> v_Sc;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) v_Sc.m[i][j] = P.J[0][i] * VJ[0][j] + P.J[1][i] * VJ[1][j];
        // Sc = Rc S3 Rc^T: v_S3 = Rc^T v_Sc Rc
        M3<T> tmp, v_S3;
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j)
                tmp.m[i][j] = P.Rc.m[0][i] * v_Sc.m[0][j] + P.Rc.m[1][i] * v_Sc.m[1][j] + P.Rc.m[2][i] * v_Sc.m[2][j];
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j)
                v_S3.m[i][j] = tmp.m[i][0] * P.Rc.m[0][j] + tmp.m[i][1] * P.Rc.m[1][j] + tmp.m[i][2] * P.Rc.m[2][j];
        // S3 = M M^T: v_M = (v_S3 + v_S3^T) M; M = Rq diag(s)
        T v_Rq[3][3];
        for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j) {
                T s = 0;
                for (int k = 0; k < 3; ++k) s += (v_S3.m[i][k] + v_S3.m[k][i]) * P.M.m[k][j];
                v_Rq[i][j] = s * scales[3 * n + j];
                // scale gradient: sum_i v_M_ij Rq_ij
            }
        for (int j = 0; j < 3; ++j) {
            T s = 0;
            for (int i = 0; i < 3; ++i) {
                T vm = 0;
                for (int k = 0; k < 3; ++k) vm += (v_S3.m[i][k] + v_S3.m[k][i]) * P.M.m[k][j];
                s += vm * P.Rq.m[i][j];
            }
            row[7 + j] = s;
        }
        // rotation of the normalised quaternion (w, x, y, z)
        const T w = P.q[0], x = P.q[1], y = P.q[2], z = P.q[3];
        const T (*g)[3] = v_Rq;
        T vq[4];
        vq[0] = 2 * (-z * g[0][1] + y * g[0][2] + z * g[1][0] - x * g[1][2] - y * g[2][0] + x * g[2][1]);
        vq[1] = 2 * (y * g[0][1] + z * g[0][2] + y * g[1][0] - 2 * x * g[1][1] - w * g[1][2] + z * g[2][0] + w * g[2][1] -
                     2 * x * g[2][2]);
        vq[2] = 2 * (-2 * y * g[0][0] + x * g[0][1] + w * g[0][2] + x * g[1][0] + z * g[1][2] - w * g[2][0] + z * g[2][1] -
                     2 * y * g[2][2]);
        vq[3] = 2 * (-2 * z * g[0][0] - w * g[0][1] + x * g[0][2] + w * g[1][0] - 2 * z * g[1][1] + y * g[1][2] +
                     x * g[2][0] + y * g[2][1]);
        // normalisation q = q_raw / max(|q_raw|, eps)
        if (P.qnorm > T(1e-12)) {
            const T dot = vq[0] * P.q[0] + vq[1] * P.q[1] + vq[2] * P.q[2] + vq[3] * P.q[3];
            for (int i = 0; i < 4; ++i) row[3 + i] = (vq[i] - P.q[i] * dot) / P.qnorm;
        } else {
            for (int i = 0; i < 4; ++i) row[3 + i] = vq[i] / T(1e-12);
        }
        // camera-space mean: J, means2d, depths
        const T zs = P.zs, rz = T(1) / zs;
        T v_p[3] = {0, 0, 0}, v_zs = 0;
        const T tx = zs * P.u, ty = zs * P.v;
        v_zs += v_J[0][0] * (-fx * rz * rz) + v_J[1][1] * (-fy * rz * rz) + v_J[0][2] * (2 * fx * tx * rz * rz * rz) +
                v_J[1][2] * (2 * fy * ty * rz * rz * rz);
        const T v_tx = v_J[0][2] * (-fx * rz * rz), v_ty = v_J[1][2] * (-fy * rz * rz);
        // tx = zs * clamp(x / zs): unclamped -> d tx = dx; clamped -> d tx = u d zs
        if (P.u_clamped) v_zs += v_tx * P.u; else v_p[0] += v_tx;
        if (P.v_clamped) v_zs += v_ty * P.v; else v_p[1] += v_ty;
        const T vmx = v_means2d[2 * cn], vmy = v_means2d[2 * cn + 1];
        v_p[0] += vmx * fx * rz;
        v_p[1] += vmy * fy * rz;
        v_zs += -(vmx * fx * P.p[0] + vmy * fy * P.p[1]) * rz * rz;
        v_p[2] += v_depths[cn] + (P.depth_ok ? v_zs : T(0));
        for (int j = 0; j < 3; ++j) row[j] = P.Rc.m[0][j] * v_p[0] + P.Rc.m[1][j] * v_p[1] + P.Rc.m[2][j] * v_p[2];
    }
    // sum over cameras in camera order
#pragma omp parallel for schedule(static) num_threads(std::max(1, pp.n_threads))
    for (int64_t n = 0; n < N; ++n) {
        T acc[11] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t c = 0; c < C; ++c) {
            const T* row = rows.data() + (c * N + n) * 11;
            for (int k = 0; k < 11; ++k) acc[k] += row[k];
            if (pp.opacities_per_camera) g_opac[c * N + n] = row[10];
        }
        for (int k = 0; k < 3; ++k) g_means[3 * n + k] = acc[k];
        for (int k = 0; k < 4; ++k) g_quats[4 * n + k] = acc[3 + k];
        for (int k = 0; k < 3; ++k) g_scales[3 * n + k] = acc[7 + k];
        if (!pp.opacities_per_camera) g_opac[n] = acc[10];
    }
}

template <typename T>
void tile_lists(const TileListProblem& tp, const T* means2d, const int32_t* radii, const T* depths,
                std::vector<int64_t>& flat_ids, std::vector<int64_t>& counts) {
    const int64_t I = tp.I, N = tp.N, per_image = int64_t(tp.tile_width) * tp.tile_height;
    const T ts = T(tp.tile_size);
    // visible Gaussians, per image by (depth, index): a stable sort of the indices by depth
    std::vector<int64_t> ids;
    ids.reserve(I * N);
    for (int64_t i = 0; i < I * N; ++i)
        if (radii[2 * i] > 0 && radii[2 * i + 1] > 0) ids.push_back(i);
    std::stable_sort(ids.begin(), ids.end(), [&](int64_t a, int64_t b) {
        const int64_t ia = a / N, ib = b / N;
        return ia != ib ? ia < ib : depths[a] < depths[b];
    });
    std::vector<int32_t> rect(ids.size() * 4);  // tx0, tx1, ty0, ty1 (exclusive ends)
    counts.assign(I * per_image, 0);
    for (size_t k = 0; k < ids.size(); ++k) {
        const int64_t g = ids[k];
        const T mx = means2d[2 * g], my = means2d[2 * g + 1], rx = T(radii[2 * g]), ry = T(radii[2 * g + 1]);
        auto clampi = [](T v, int hi) { return int32_t(std::min(std::max(v, T(0)), T(hi))); };
        int32_t* r = &rect[4 * k];
        r[0] = clampi(std::floor((mx - rx) / ts), tp.tile_width);
        r[1] = clampi(std::ceil((mx + rx) / ts), tp.tile_width);
        r[2] = clampi(std::floor((my - ry) / ts), tp.tile_height);
        r[3] = clampi(std::ceil((my + ry) / ts), tp.tile_height);
        const int64_t base = (g / N) * per_image;
        for (int32_t ty = r[2]; ty < r[3]; ++ty)
            for (int32_t tx = r[0]; tx < r[1]; ++tx) ++counts[base + int64_t(ty) * tp.tile_width + tx];
    }
    std::vector<int64_t> cursor(counts.size());
    int64_t total = 0;
    for (size_t t = 0; t < counts.size(); ++t) {
        cursor[t] = total;
        total += counts[t];
    }
    flat_ids.resize(total);
    for (size_t k = 0; k < ids.size(); ++k) {
        const int64_t g = ids[k], base = (g / N) * per_image;
        const int32_t* r = &rect[4 * k];
        for (int32_t ty = r[2]; ty < r[3]; ++ty)
            for (int32_t tx = r[0]; tx < r[1]; ++tx) flat_ids[cursor[base + int64_t(ty) * tp.tile_width + tx]++] = g;
    }
}

template void project_forward<float>(const ProjectProblem&, const float*, const float*, const float*, const float*,
                                     const float*, const float*, float*, float*, float*, int32_t*, float*, float*);
template void project_forward<double>(const ProjectProblem&, const double*, const double*, const double*,
                                      const double*, const double*, const double*, double*, double*, double*,
                                      int32_t*, double*, double*);
template void project_backward<float>(const ProjectProblem&, const float*, const float*, const float*, const float*,
                                      const float*, const float*, const float*, const float*, const float*,
                                      const float*, float*, float*, float*, float*);
template void project_backward<double>(const ProjectProblem&, const double*, const double*, const double*,
                                       const double*, const double*, const double*, const double*, const double*,
                                       const double*, const double*, double*, double*, double*, double*);
template void tile_lists<float>(const TileListProblem&, const float*, const int32_t*, const float*,
                                std::vector<int64_t>&, std::vector<int64_t>&);
template void tile_lists<double>(const TileListProblem&, const double*, const int32_t*, const double*,
                                 std::vector<int64_t>&, std::vector<int64_t>&);

}  // namespace flow3d_raster
