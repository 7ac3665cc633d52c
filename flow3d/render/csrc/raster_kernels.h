// Kernels of the compiled CPU rasterizer (no torch dependency; see raster_kernels.cpp for the rules).
#pragma once

#include <cstdint>
#include <vector>

namespace flow3d_raster {

// One rasterization problem: I images of width x height pixels cut into tiles of tile_size^2 pixels.
// Tile lists (all int64): tile_ids[i] is the global tile id image * tile_width * tile_height +
// ty * tile_width + tx of the i-th tile to process; its depth-sorted Gaussians are
// flat_ids[starts[i] : starts[i] + counts[i]], rows of the (I * N) Gaussian tables.
struct Problem {
    int n_threads;     // OpenMP threads (the caller passes torch.get_num_threads())
    int64_t n_tiles, D;
    bool whole_tiles;  // evaluate every pixel of a tile (no ellipse spans): for tests
    int width, height, tile_size, tile_width, tile_height;
    const int64_t *flat_ids, *starts, *counts, *tile_ids;
};

// Colours (I, H, W, D) without background, transmittance T_final (I, H, W) and last (I, H, W): one past
// the tile-list position of the last Gaussian drawn in each pixel (0: none).
template <typename scalar_t>
void forward_kernel(const Problem& pb, const scalar_t* means2d, const scalar_t* conics, const scalar_t* opacities,
                    const scalar_t* colors, scalar_t* out_colors, scalar_t* out_T, int32_t* out_last);

// Per-intersection gradient rows (M, 6 + D): (dmean2d x, y, dconic A, B, C, dopacity, dcolour[D]) from
// dL/dcolours (I, H, W, D) and dL/dT_final (I, H, W); with g_abs (M, 2): sums over pixels of |dL/dmean2d|.
template <typename scalar_t>
void backward_kernel(const Problem& pb, const scalar_t* means2d, const scalar_t* conics, const scalar_t* opacities,
                     const scalar_t* colors, const scalar_t* T_final, const int32_t* last_in,
                     const scalar_t* v_colors, const scalar_t* v_T, scalar_t* g_rows, scalar_t* g_abs);

// out[flat_ids[m]] += rows[m] (rows of `width` values), summed in increasing m for every output row.
template <typename scalar_t>
void reduce_rows(const scalar_t* rows, int64_t width, const int64_t* flat_ids, int64_t M, int64_t n_out,
                 int n_threads, scalar_t* out);

// EWA projection of N Gaussians into C pinhole cameras (project_kernels.cpp).
struct ProjectProblem {
    int n_threads;
    int64_t C, N;
    int width, height;
    double eps2d, near_plane, far_plane, radius_clip;
    bool antialiased;
    bool opacities_per_camera;  // opacities (C, N) instead of (N,)
};

// means2d (C, N, 2), conics (C, N, 3), depths (C, N), radii (C, N, 2), opacities (C, N) (times the
// compensation when antialiased) and compensations (C, N).
template <typename T>
void project_forward(const ProjectProblem& pp, const T* means, const T* quats, const T* scales, const T* opacities,
                     const T* viewmats, const T* Ks, T* means2d, T* conics, T* depths, int32_t* radii, T* opac_out,
                     T* comp_out);

// Gradients of the projection's outputs -> means (N, 3), quats (N, 4), scales (N, 3), opacities.
template <typename T>
void project_backward(const ProjectProblem& pp, const T* means, const T* quats, const T* scales, const T* opacities,
                      const T* viewmats, const T* Ks, const T* v_means2d, const T* v_conics, const T* v_depths,
                      const T* v_opac, T* g_means, T* g_quats, T* g_scales, T* g_opac);

// Tile lists of I images: the visible Gaussians (radii > 0) of every tile, depth-sorted (ties by index),
// grouped by global tile id; counts per global tile id.
struct TileListProblem {
    int64_t I, N;
    int tile_size, tile_width, tile_height;
};

template <typename T>
void tile_lists(const TileListProblem& tp, const T* means2d, const int32_t* radii, const T* depths,
                std::vector<int64_t>& flat_ids, std::vector<int64_t>& counts);

}  // namespace flow3d_raster
