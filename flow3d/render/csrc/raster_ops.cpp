// Torch bindings of the compiled CPU rasterizer (kernels in raster_kernels.cpp, which needs no torch
// header and so compiles in parallel with this file): torch.ops.flow3d_raster.forward / backward.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <numeric>
#include <tuple>
#include <vector>

#include "raster_kernels.h"

namespace flow3d_raster {

static void check_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
                         const at::Tensor& colors, const at::Tensor& flat_ids, const at::Tensor& starts,
                         const at::Tensor& counts, const at::Tensor& tile_ids) {
    const int64_t n = means2d.size(0);
    TORCH_CHECK(means2d.dim() == 2 && means2d.size(1) == 2, "means2d must be (I*N, 2)");
    TORCH_CHECK(conics.dim() == 2 && conics.size(0) == n && conics.size(1) == 3, "conics must be (I*N, 3)");
    TORCH_CHECK(opacities.dim() == 1 && opacities.size(0) == n, "opacities must be (I*N,)");
    TORCH_CHECK(colors.dim() == 2 && colors.size(0) == n, "colors must be (I*N, D)");
    for (const at::Tensor* x : {&means2d, &conics, &opacities, &colors}) {
        TORCH_CHECK(x->device().is_cpu() && x->is_contiguous(), "inputs must be contiguous CPU tensors");
        TORCH_CHECK(x->scalar_type() == means2d.scalar_type(), "inputs must share one dtype");
    }
    TORCH_CHECK(means2d.scalar_type() == at::kFloat || means2d.scalar_type() == at::kDouble,
                "the compiled rasterizer supports float32 and float64, got ", means2d.scalar_type());
    for (const at::Tensor* x : {&flat_ids, &starts, &counts, &tile_ids}) {
        TORCH_CHECK(x->scalar_type() == at::kLong && x->is_contiguous() && x->dim() == 1,
                    "tile lists must be contiguous int64 vectors");
    }
    TORCH_CHECK(starts.size(0) == counts.size(0) && starts.size(0) == tile_ids.size(0), "one start and count per tile");
}

static Problem make_problem(const at::Tensor& colors, const at::Tensor& flat_ids, const at::Tensor& starts,
                            const at::Tensor& counts, const at::Tensor& tile_ids, int64_t width, int64_t height,
                            int64_t tile_size, int64_t tile_width, int64_t tile_height, bool whole_tiles) {
    Problem pb;
    pb.n_threads = std::max(1, at::get_num_threads());
    pb.whole_tiles = whole_tiles;
    pb.n_tiles = tile_ids.size(0);
    pb.D = colors.size(1);
    pb.width = int(width);
    pb.height = int(height);
    pb.tile_size = int(tile_size);
    pb.tile_width = int(tile_width);
    pb.tile_height = int(tile_height);
    pb.flat_ids = flat_ids.data_ptr<int64_t>();
    pb.starts = starts.data_ptr<int64_t>();
    pb.counts = counts.data_ptr<int64_t>();
    pb.tile_ids = tile_ids.data_ptr<int64_t>();
    return pb;
}

// Returns colours (I, H, W, D) without background, T_final (I, H, W) and last (I, H, W) int32: one past
// the tile-list position of the last Gaussian drawn in each pixel (0: none).
std::tuple<at::Tensor, at::Tensor, at::Tensor> forward(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities, const at::Tensor& colors,
    const at::Tensor& flat_ids, const at::Tensor& starts, const at::Tensor& counts, const at::Tensor& tile_ids,
    int64_t n_images, int64_t width, int64_t height, int64_t tile_size, int64_t tile_width, int64_t tile_height,
    bool whole_tiles) {
    check_inputs(means2d, conics, opacities, colors, flat_ids, starts, counts, tile_ids);
    TORCH_CHECK(tile_ids.size(0) == n_images * tile_width * tile_height, "one entry per tile of every image");
    const Problem pb = make_problem(colors, flat_ids, starts, counts, tile_ids, width, height, tile_size, tile_width,
                                    tile_height, whole_tiles);
    auto out_colors = at::empty({n_images, height, width, pb.D}, colors.options());
    auto out_T = at::empty({n_images, height, width}, colors.options());
    auto out_last = at::empty({n_images, height, width}, colors.options().dtype(at::kInt));
    if (means2d.scalar_type() == at::kFloat) {
        forward_kernel<float>(pb, means2d.data_ptr<float>(), conics.data_ptr<float>(), opacities.data_ptr<float>(),
                              colors.data_ptr<float>(), out_colors.data_ptr<float>(), out_T.data_ptr<float>(),
                              out_last.data_ptr<int32_t>());
    } else {
        forward_kernel<double>(pb, means2d.data_ptr<double>(), conics.data_ptr<double>(),
                               opacities.data_ptr<double>(), colors.data_ptr<double>(), out_colors.data_ptr<double>(),
                               out_T.data_ptr<double>(), out_last.data_ptr<int32_t>());
    }
    return {out_colors, out_T, out_last};
}

// Returns the gradient table (I*N, 6 + D): (mean2d x, y, conic A, B, C, opacity, colour) and, when
// absgrad, (I*N, 2) sums over pixels of |dL/dmean2d| (else an empty tensor).
std::tuple<at::Tensor, at::Tensor> backward(
    const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities, const at::Tensor& colors,
    const at::Tensor& flat_ids, const at::Tensor& starts, const at::Tensor& counts, const at::Tensor& tile_ids,
    const at::Tensor& T_final, const at::Tensor& last, const at::Tensor& v_colors, const at::Tensor& v_T,
    int64_t width, int64_t height, int64_t tile_size, int64_t tile_width, int64_t tile_height, bool absgrad,
    bool whole_tiles) {
    check_inputs(means2d, conics, opacities, colors, flat_ids, starts, counts, tile_ids);
    const Problem pb = make_problem(colors, flat_ids, starts, counts, tile_ids, width, height, tile_size, tile_width,
                                    tile_height, whole_tiles);
    const int64_t n_pix = tile_ids.size(0) / (tile_width * tile_height) * width * height;
    TORCH_CHECK(T_final.is_contiguous() && T_final.numel() == n_pix && T_final.scalar_type() == colors.scalar_type(),
                "T_final must be a contiguous (I, H, W) tensor");
    TORCH_CHECK(last.is_contiguous() && last.numel() == n_pix && last.scalar_type() == at::kInt,
                "last must be a contiguous (I, H, W) int32 tensor");
    TORCH_CHECK(v_colors.is_contiguous() && v_colors.numel() == n_pix * pb.D &&
                    v_colors.scalar_type() == colors.scalar_type(),
                "v_colors must be a contiguous (I, H, W, D) tensor");
    TORCH_CHECK(v_T.is_contiguous() && v_T.numel() == n_pix && v_T.scalar_type() == colors.scalar_type(),
                "v_T must be a contiguous (I, H, W) tensor");
    const int64_t M = flat_ids.size(0), R = 6 + pb.D, n_out = means2d.size(0);
    auto rows = at::empty({M, R}, colors.options());
    auto abs_rows = absgrad ? at::empty({M, 2}, colors.options()) : at::empty({0}, colors.options());
    auto grads = at::zeros({n_out, R}, colors.options());
    auto abs_grads = absgrad ? at::zeros({n_out, 2}, colors.options()) : at::empty({0}, colors.options());
    if (means2d.scalar_type() == at::kFloat) {
        backward_kernel<float>(pb, means2d.data_ptr<float>(), conics.data_ptr<float>(), opacities.data_ptr<float>(),
                               colors.data_ptr<float>(), T_final.data_ptr<float>(), last.data_ptr<int32_t>(),
                               v_colors.data_ptr<float>(), v_T.data_ptr<float>(), rows.data_ptr<float>(),
                               absgrad ? abs_rows.data_ptr<float>() : nullptr);
        reduce_rows<float>(rows.data_ptr<float>(), R, pb.flat_ids, M, n_out, pb.n_threads, grads.data_ptr<float>());
        if (absgrad) reduce_rows<float>(abs_rows.data_ptr<float>(), 2, pb.flat_ids, M, n_out, pb.n_threads, abs_grads.data_ptr<float>());
    } else {
        backward_kernel<double>(pb, means2d.data_ptr<double>(), conics.data_ptr<double>(),
                                opacities.data_ptr<double>(), colors.data_ptr<double>(), T_final.data_ptr<double>(),
                                last.data_ptr<int32_t>(), v_colors.data_ptr<double>(), v_T.data_ptr<double>(),
                                rows.data_ptr<double>(), absgrad ? abs_rows.data_ptr<double>() : nullptr);
        reduce_rows<double>(rows.data_ptr<double>(), R, pb.flat_ids, M, n_out, pb.n_threads, grads.data_ptr<double>());
        if (absgrad)
            reduce_rows<double>(abs_rows.data_ptr<double>(), 2, pb.flat_ids, M, n_out, pb.n_threads, abs_grads.data_ptr<double>());
    }
    return {grads, abs_grads};
}

static void check_projection_inputs(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                    const at::Tensor& opacities, const at::Tensor& viewmats, const at::Tensor& Ks) {
    const int64_t N = means.size(0), C = viewmats.size(0);
    TORCH_CHECK(means.dim() == 2 && means.size(1) == 3, "means must be (N, 3)");
    TORCH_CHECK(quats.dim() == 2 && quats.size(0) == N && quats.size(1) == 4, "quats must be (N, 4)");
    TORCH_CHECK(scales.dim() == 2 && scales.size(0) == N && scales.size(1) == 3, "scales must be (N, 3)");
    TORCH_CHECK((opacities.dim() == 1 && opacities.size(0) == N) ||
                    (opacities.dim() == 2 && opacities.size(0) == C && opacities.size(1) == N),
                "opacities must be (N,) or (C, N)");
    TORCH_CHECK(viewmats.dim() == 3 && viewmats.size(1) == 4 && viewmats.size(2) == 4, "viewmats must be (C, 4, 4)");
    TORCH_CHECK(Ks.dim() == 3 && Ks.size(0) == C && Ks.size(1) == 3 && Ks.size(2) == 3, "Ks must be (C, 3, 3)");
    for (const at::Tensor* x : {&means, &quats, &scales, &opacities, &viewmats, &Ks}) {
        TORCH_CHECK(x->device().is_cpu() && x->is_contiguous(), "inputs must be contiguous CPU tensors");
        TORCH_CHECK(x->scalar_type() == means.scalar_type(), "inputs must share one dtype");
    }
    TORCH_CHECK(means.scalar_type() == at::kFloat || means.scalar_type() == at::kDouble,
                "the compiled projection supports float32 and float64, got ", means.scalar_type());
}

static ProjectProblem make_project_problem(const at::Tensor& means, const at::Tensor& opacities,
                                           const at::Tensor& viewmats, int64_t width, int64_t height, double eps2d,
                                           double near_plane, double far_plane, double radius_clip, bool antialiased) {
    ProjectProblem pp;
    pp.n_threads = std::max(1, at::get_num_threads());
    pp.C = viewmats.size(0);
    pp.N = means.size(0);
    pp.width = int(width);
    pp.height = int(height);
    pp.eps2d = eps2d;
    pp.near_plane = near_plane;
    pp.far_plane = far_plane;
    pp.radius_clip = radius_clip;
    pp.antialiased = antialiased;
    pp.opacities_per_camera = opacities.dim() == 2;
    return pp;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> project(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
    const at::Tensor& viewmats, const at::Tensor& Ks, int64_t width, int64_t height, double eps2d, double near_plane,
    double far_plane, double radius_clip, bool antialiased) {
    check_projection_inputs(means, quats, scales, opacities, viewmats, Ks);
    const ProjectProblem pp =
        make_project_problem(means, opacities, viewmats, width, height, eps2d, near_plane, far_plane, radius_clip, antialiased);
    const auto opt = means.options();
    auto means2d = at::empty({pp.C, pp.N, 2}, opt), conics = at::empty({pp.C, pp.N, 3}, opt);
    auto depths = at::empty({pp.C, pp.N}, opt), opac = at::empty({pp.C, pp.N}, opt), comp = at::empty({pp.C, pp.N}, opt);
    auto radii = at::empty({pp.C, pp.N, 2}, opt.dtype(at::kInt));
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "flow3d_raster::project", [&] {
        project_forward<scalar_t>(pp, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
                                  opacities.data_ptr<scalar_t>(), viewmats.data_ptr<scalar_t>(), Ks.data_ptr<scalar_t>(),
                                  means2d.data_ptr<scalar_t>(), conics.data_ptr<scalar_t>(), depths.data_ptr<scalar_t>(),
                                  radii.data_ptr<int32_t>(), opac.data_ptr<scalar_t>(), comp.data_ptr<scalar_t>());
    });
    return {means2d, conics, depths, radii, opac, comp};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> project_backward_op(
    const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
    const at::Tensor& viewmats, const at::Tensor& Ks, const at::Tensor& v_means2d, const at::Tensor& v_conics,
    const at::Tensor& v_depths, const at::Tensor& v_opac, int64_t width, int64_t height, double eps2d,
    double near_plane, double far_plane, double radius_clip, bool antialiased) {
    check_projection_inputs(means, quats, scales, opacities, viewmats, Ks);
    const ProjectProblem pp =
        make_project_problem(means, opacities, viewmats, width, height, eps2d, near_plane, far_plane, radius_clip, antialiased);
    const int64_t CN = pp.C * pp.N;
    TORCH_CHECK(v_means2d.is_contiguous() && v_means2d.numel() == CN * 2 && v_conics.is_contiguous() &&
                    v_conics.numel() == CN * 3 && v_depths.is_contiguous() && v_depths.numel() == CN &&
                    v_opac.is_contiguous() && v_opac.numel() == CN,
                "projection gradients must be contiguous (C, N, .) tensors");
    auto g_means = at::empty_like(means), g_quats = at::empty_like(quats), g_scales = at::empty_like(scales);
    auto g_opac = at::empty_like(opacities);
    AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "flow3d_raster::project_backward", [&] {
        project_backward<scalar_t>(pp, means.data_ptr<scalar_t>(), quats.data_ptr<scalar_t>(), scales.data_ptr<scalar_t>(),
                                   opacities.data_ptr<scalar_t>(), viewmats.data_ptr<scalar_t>(), Ks.data_ptr<scalar_t>(),
                                   v_means2d.data_ptr<scalar_t>(), v_conics.data_ptr<scalar_t>(),
                                   v_depths.data_ptr<scalar_t>(), v_opac.data_ptr<scalar_t>(), g_means.data_ptr<scalar_t>(),
                                   g_quats.data_ptr<scalar_t>(), g_scales.data_ptr<scalar_t>(), g_opac.data_ptr<scalar_t>());
    });
    return {g_means, g_quats, g_scales, g_opac};
}

// flat_ids, and starts / counts / global tile ids in processing order (longest list first, stable).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> tile_lists_op(const at::Tensor& means2d,
                                                                         const at::Tensor& radii,
                                                                         const at::Tensor& depths, int64_t width,
                                                                         int64_t height, int64_t tile_size) {
    TORCH_CHECK(means2d.dim() == 3 && means2d.size(2) == 2 && means2d.is_contiguous(), "means2d must be (I, N, 2)");
    TORCH_CHECK(radii.sizes() == means2d.sizes() && radii.scalar_type() == at::kInt && radii.is_contiguous(),
                "radii must be (I, N, 2) int32");
    TORCH_CHECK(depths.dim() == 2 && depths.size(0) == means2d.size(0) && depths.size(1) == means2d.size(1) &&
                    depths.scalar_type() == means2d.scalar_type() && depths.is_contiguous(),
                "depths must be (I, N) of the means' dtype");
    TileListProblem tp;
    tp.I = means2d.size(0);
    tp.N = means2d.size(1);
    tp.tile_size = int(tile_size);
    tp.tile_width = int((width + tile_size - 1) / tile_size);
    tp.tile_height = int((height + tile_size - 1) / tile_size);
    std::vector<int64_t> flat, counts;
    AT_DISPATCH_FLOATING_TYPES(means2d.scalar_type(), "flow3d_raster::tile_lists", [&] {
        tile_lists<scalar_t>(tp, means2d.data_ptr<scalar_t>(), radii.data_ptr<int32_t>(), depths.data_ptr<scalar_t>(),
                             flat, counts);
    });
    const int64_t n_tiles = int64_t(counts.size());
    std::vector<int64_t> order(n_tiles);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return counts[a] > counts[b]; });
    std::vector<int64_t> starts_by_id(n_tiles);
    int64_t total = 0;
    for (int64_t t = 0; t < n_tiles; ++t) {
        starts_by_id[t] = total;
        total += counts[t];
    }
    const auto lopt = means2d.options().dtype(at::kLong);
    auto flat_t = at::empty({int64_t(flat.size())}, lopt), starts = at::empty({n_tiles}, lopt);
    auto counts_t = at::empty({n_tiles}, lopt), order_t = at::empty({n_tiles}, lopt);
    std::copy(flat.begin(), flat.end(), flat_t.data_ptr<int64_t>());
    for (int64_t i = 0; i < n_tiles; ++i) {
        order_t.data_ptr<int64_t>()[i] = order[i];
        starts.data_ptr<int64_t>()[i] = starts_by_id[order[i]];
        counts_t.data_ptr<int64_t>()[i] = counts[order[i]];
    }
    return {flat_t, starts, counts_t, order_t};
}

}  // namespace flow3d_raster

TORCH_LIBRARY(flow3d_raster, m) {
    m.def(
        "forward(Tensor means2d, Tensor conics, Tensor opacities, Tensor colors, Tensor flat_ids, Tensor starts, "
        "Tensor counts, Tensor tile_ids, int n_images, int width, int height, int tile_size, int tile_width, "
        "int tile_height, bool whole_tiles) -> (Tensor, Tensor, Tensor)",
        &flow3d_raster::forward);
    m.def(
        "backward(Tensor means2d, Tensor conics, Tensor opacities, Tensor colors, Tensor flat_ids, Tensor starts, "
        "Tensor counts, Tensor tile_ids, Tensor T_final, Tensor last, Tensor v_colors, Tensor v_T, int width, "
        "int height, int tile_size, int tile_width, int tile_height, bool absgrad, bool whole_tiles) -> (Tensor, Tensor)",
        &flow3d_raster::backward);
    m.def(
        "project(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor viewmats, Tensor Ks, int width, "
        "int height, float eps2d, float near_plane, float far_plane, float radius_clip, bool antialiased) -> "
        "(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)",
        &flow3d_raster::project);
    m.def(
        "project_backward(Tensor means, Tensor quats, Tensor scales, Tensor opacities, Tensor viewmats, Tensor Ks, "
        "Tensor v_means2d, Tensor v_conics, Tensor v_depths, Tensor v_opacities, int width, int height, float eps2d, "
        "float near_plane, float far_plane, float radius_clip, bool antialiased) -> (Tensor, Tensor, Tensor, Tensor)",
        &flow3d_raster::project_backward_op);
    m.def(
        "tile_lists(Tensor means2d, Tensor radii, Tensor depths, int width, int height, int tile_size) -> "
        "(Tensor, Tensor, Tensor, Tensor)",
        &flow3d_raster::tile_lists_op);
}
