"""Colormaps, overlays and labelled grids.

Everything up to the final image is a torch operation on the maps' device; the grid is turned
into ``uint8`` there and moved to the host once, where PIL writes the header and the row labels.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, cached_property

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor
from torchvision.utils import make_grid

__all__ = [
    "COLORMAPS",
    "Grid",
    "apply_colormap",
    "display_images",
    "outline",
    "overlay",
    "render_grid",
    "render_table",
]

# Polynomial fits of matplotlib's viridis and inferno (Matt Zucker, CC0) and of Google's turbo
# (Anton Mikhailov, Apache-2.0): coefficients of x^0 .. x^n for red, green and blue.
_POLYNOMIALS: dict[str, tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]] = {
    "viridis": (
        (0.2777273272, 0.1050930431, -0.3308618287, -4.6342304990, 6.2282699363, 4.7763849977, -5.4354558559),
        (
            0.0054073445,
            1.4046135299,
            0.2148475595,
            -5.7991009734,
            14.1799333668,
            -13.7451453777,
            4.6458526122,
        ),
        (
            0.3340998053,
            1.3845901626,
            0.0950951630,
            -19.3324409563,
            56.6905526007,
            -65.3530326334,
            26.3124352496,
        ),
    ),
    "inferno": (
        (
            0.0002189404,
            0.1065134195,
            11.6024930825,
            -41.7039961314,
            77.1629356994,
            -71.3194282450,
            25.1311262248,
        ),
        (
            0.0016510046,
            0.5639564368,
            -3.9728539657,
            17.4363988821,
            -33.4023589421,
            32.6260642640,
            -12.2426689524,
        ),
        (
            -0.0194808984,
            3.9327123889,
            -15.9423941063,
            44.3541451987,
            -81.8073092574,
            73.2095198580,
            -23.0703250029,
        ),
    ),
    "turbo": (
        (0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943),
        (0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604),
        (0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973),
    ),
}
COLORMAPS: tuple[str, ...] = ("jet", "turbo", "viridis", "inferno", "gray")
"""Colormap names accepted by :func:`apply_colormap` and ``CAMMonitor(colormap=...)``."""


@cache
def _lookup_table(name: str) -> Tensor:
    """A ``[256, 3]`` float table in ``[0, 1]`` for the colormap ``name`` (on the CPU)."""
    x = torch.linspace(0, 1, 256, dtype=torch.float64)
    if name == "jet":
        table = torch.stack([1.5 - (4 * x - shift).abs() for shift in (3.0, 2.0, 1.0)], dim=1)
    elif name == "gray":
        table = x[:, None].repeat(1, 3)
    elif name in _POLYNOMIALS:
        powers = torch.stack([x**n for n in range(7)], dim=1)
        table = torch.stack(
            [
                powers[:, : len(coeffs)] @ torch.tensor(coeffs, dtype=torch.float64)
                for coeffs in _POLYNOMIALS[name]
            ],
            dim=1,
        )
    else:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}.")
    return table.clamp(0, 1).float()


def apply_colormap(maps: Tensor, name: str = "jet") -> Tensor:
    """Colour maps ``[..., H, W]`` in ``[0, 1]`` into RGB ``[..., 3, H, W]`` in ``[0, 1]``."""
    table = _lookup_table(name).to(maps.device)
    index = (maps.clamp(0, 1) * 255).round().long()
    return table[index].movedim(-1, -3)


def display_images(
    images: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    channel: int | None = None,
) -> Tensor:
    """Images ``[B, C, H, W]`` (or volumes ``[B, C, D, H, W]``) as RGB in ``[0, 1]`` for display: undo
    ``(x - mean) / std`` normalisation, show ``channel`` in grey when given (one of several MRI
    sequences, say), repeat a single channel to three, keep the first three of more channels; ``uint8``
    images are read as ``0..255``."""
    images = images.detach().float() / (255.0 if images.dtype == torch.uint8 else 1.0)
    for name, values in (("image_mean", mean), ("image_std", std)):
        if values is not None and len(values) not in (1, images.shape[1]):
            raise ValueError(
                f"{name} has {len(values)} values for images with {images.shape[1]} channel(s); give one value "
                f"per channel (or one for all), e.g. {name}=[{', '.join(['0.5'] * images.shape[1])}]."
            )
    per_channel = (1, -1, *([1] * (images.dim() - 2)))
    if std is not None:
        images = images * torch.tensor(std, device=images.device, dtype=images.dtype).view(per_channel)
    if mean is not None:
        images = images + torch.tensor(mean, device=images.device, dtype=images.dtype).view(per_channel)
    if channel is not None:
        images = images[:, channel : channel + 1]
    channels = images.shape[1]
    if channels == 1:
        images = images.repeat(1, 3, *([1] * (images.dim() - 2)))
    elif channels != 3:
        images = images[:, :3] if channels > 3 else torch.cat([images, images[:, -1:]], dim=1)
    return images.clamp(0, 1)


def overlay(
    images: Tensor, maps: Tensor, colormap: str = "jet", alpha: float = 0.5, flat: Tensor | None = None
) -> Tensor:
    """Blend coloured maps ``[B, H, W]`` over display images ``[B, 3, H, W]``: ``alpha`` heat. A flat
    (all-zero) map is no attention at all: its tile shows the image faded to grey instead. ``flat``
    ``[B]`` says which maps are flat when the tiles are slices of larger maps (a volume's)."""
    heat = (1 - alpha) * images + alpha * apply_colormap(maps, colormap)
    flat = maps.flatten(1).amax(dim=1) <= 0 if flat is None else flat
    grey = (0.3 + 0.4 * images.mean(dim=1, keepdim=True)).expand_as(images)
    return torch.where(flat.view(-1, 1, 1, 1), grey, heat)


def outline(tiles: Tensor, regions: Tensor) -> Tensor:
    """Draw the boundary of each row's region ``[B, H, W]`` on its tiles ``[B, T, 3, H, W]``: white on the
    region's edge pixels and black on the pixels just outside, so the line shows on any colour."""
    inside = regions[:, None].float()
    inner = (inside * F.max_pool2d(1 - inside, 3, stride=1, padding=1) > 0)[:, None]  # [B, 1, 1, H, W]
    outer = ((1 - inside) * F.max_pool2d(inside, 3, stride=1, padding=1) > 0)[:, None]
    return torch.where(inner, torch.ones_like(tiles), torch.where(outer, torch.zeros_like(tiles), tiles))


BOX_COLOUR = (1.0, 0.85, 0.0)


def draw_boxes(tiles: Tensor, boxes: Sequence[Tensor]) -> Tensor:
    """Draw each row's boxes ``[N, 4]`` (x1, y1, x2, y2) as 1-pixel rectangles in ``BOX_COLOUR`` on its
    tiles ``[B, T, 3, H, W]``."""
    height, width = tiles.shape[-2:]
    ys = torch.arange(height, device=tiles.device)[:, None]
    xs = torch.arange(width, device=tiles.device)[None, :]
    edges = []
    for row in boxes:
        x1, y1, x2, y2 = (row.to(tiles.device).round().long()[:, i, None, None] for i in range(4))
        x2, y2 = torch.maximum(x2 - 1, x1), torch.maximum(y2 - 1, y1)  # the last pixel a box covers
        across = (xs >= x1) & (xs <= x2) & ((ys == y1) | (ys == y2))
        down = (ys >= y1) & (ys <= y2) & ((xs == x1) | (xs == x2))
        edges.append((across | down).any(dim=0))  # no box: no edge
    colour = torch.tensor(BOX_COLOUR, device=tiles.device, dtype=tiles.dtype).view(3, 1, 1)
    return torch.where(torch.stack(edges)[:, None, None], colour, tiles)


def _write_notes(
    draw: ImageDraw.ImageDraw,
    notes: Sequence[tuple[float, float, str]],
    corner: tuple[int, int],
    tile: tuple[int, int],
    zoom: float,
) -> None:
    """Each note's text on a ``BOX_COLOUR`` patch, its top left at the note's point times ``zoom`` from the
    tile's ``corner``, kept inside the tile (``(width, height)``) and moved down below the notes written
    before it that it would cover."""
    font = _font(max(9, min(12, tile[1] // 10)))
    background = tuple(round(255 * c) for c in BOX_COLOUR)
    written: list[tuple[int, int, int, int]] = []
    for x, y, text in notes:
        box = draw.textbbox((0, 0), text, font=font)
        width, height = box[2] - box[0] + 2, box[3] - box[1] + 2
        left = min(max(0, round(x * zoom)), max(0, tile[0] - width))
        top = max(0, round(y * zoom))
        for other in sorted(written, key=lambda rect: rect[1]):
            if left < other[2] and other[0] < left + width and top < other[3] and other[1] < top + height:
                top = other[3]
        top = min(top, max(0, tile[1] - height))
        written.append((left, top, left + width, top + height))
        left, top = left + corner[0], top + corner[1]
        draw.rectangle((left, top, left + width - 1, top + height - 1), fill=background)
        draw.text((left + 1 - box[0], top + 1 - box[1]), text, fill="black", font=font)


@dataclass(frozen=True)
class Grid:
    """A rendered grid: a header, then per sample a caption and a row of tiles.

    Attributes:
        picture: the whole grid as a PIL image, header included (``image`` is the same as an array).
        columns: the column names (``"input"`` then one per method).
        captions: one caption per row (true label, prediction and confidence).
        tile: ``(height, width)`` of a tile, padding excluded.
        padding: pixels between tiles and around the grid.
        header: height of the header strip above the tiles.
        left: width of the caption strip left of the tiles.
    """

    picture: Image.Image
    columns: tuple[str, ...]
    captions: tuple[str, ...]
    tile: tuple[int, int]
    padding: int
    header: int
    left: int

    @cached_property
    def image(self) -> np.ndarray:
        """The grid as ``[H, W, 3]`` ``uint8``."""
        return np.asarray(self.picture)

    def png(self) -> bytes:
        """The grid as PNG bytes, encoded with fast compression (zlib level 1: about 3x faster than
        PIL's default for 15% larger files, since a check's time is training time); encoded once, so
        every writer and the audit page share the bytes."""
        return self._png

    @cached_property
    def _png(self) -> bytes:
        buffer = io.BytesIO()
        self.picture.save(buffer, format="PNG", compress_level=1)
        return buffer.getvalue()

    def cell(self, row: int, column: int) -> np.ndarray:
        """The tile of sample ``row`` in ``column`` as ``[h, w, 3]`` ``uint8``."""
        height, width = self.tile
        top = self.header + self.padding + row * (height + self.padding)
        left = self.left + self.padding + column * (width + self.padding)
        return self.image[top : top + height, left : left + width]


@cache
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


MAX_TILE = 256  # the default longest side of a tile, in pixels


def _tile_scale(height: int, width: int, min_tile: int) -> int:
    return max(1, -(-min_tile // min(height, width)))


def _sized_tiles(flat: Tensor, min_tile: int, max_tile: int | None) -> Tensor:
    """Tiles ``[N, 3, H, W]`` longer than ``max_tile`` scaled down (antialiased) to that length, then
    small ones enlarged (nearest neighbour, integer factor) to at least ``min_tile``."""
    height, width = flat.shape[-2:]
    if max_tile is not None and max(height, width) > max_tile:
        factor = max_tile / max(height, width)
        height, width = max(1, round(height * factor)), max(1, round(width * factor))
        flat = F.interpolate(flat, size=(height, width), mode="bilinear", antialias=True).clamp(0, 1)
    scale = _tile_scale(height, width, min_tile)
    return F.interpolate(flat, scale_factor=scale, mode="nearest") if scale > 1 else flat


def render_table(
    tiles: Tensor,
    columns: Sequence[str],
    captions: Sequence[str],
    *,
    min_tile: int = 112,
    max_tile: int | None = MAX_TILE,
    padding: int = 2,
    notes: Sequence[Sequence[tuple[float, float, str]]] | None = None,
) -> Grid:
    """A labelled table of RGB tiles ``[rows, columns, 3, H, W]`` in ``[0, 1]``: a header with the
    column names, a caption left of each row (one line per ``\\n``). Small tiles are enlarged
    (nearest neighbour, integer factor) to at least ``min_tile`` pixels; tiles longer than
    ``max_tile`` pixels are scaled down (antialiased) to that length, so that a long run's logs stay
    small (``None``: full resolution). ``notes``: per row, ``(x, y, text)`` written on the row's first
    tile with its top left at ``(x, y)`` (the tiles' pixels, before scaling), black on ``BOX_COLOUR``.
    The tiles are assembled on their device; one ``uint8`` transfer to the host, then PIL writes the text."""
    rows, count, _, height, width = tiles.shape
    flat = _sized_tiles(tiles.reshape(rows * count, 3, height, width), min_tile, max_tile)
    tile_h, tile_w = flat.shape[-2:]
    body = make_grid(flat, nrow=count, padding=padding, pad_value=1.0)
    pixels = (body * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()  # the one transfer

    font_size = max(10, min(16, tile_h // 9))
    font = _font(font_size)
    header = font_size + 8
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    label_width = max((int(measure.multiline_textbbox((0, 0), c, font=font)[2]) for c in captions), default=0)
    label_width = label_width + 8 if label_width else 0
    canvas = Image.new("RGB", (label_width + pixels.shape[1], pixels.shape[0] + header), "white")
    canvas.paste(Image.fromarray(pixels), (label_width, header))
    draw = ImageDraw.Draw(canvas)
    for index, name in enumerate(columns):
        left = label_width + padding + index * (tile_w + padding)
        draw.text((left + tile_w / 2, header / 2), name, fill="black", font=font, anchor="mm")
    for row, caption in enumerate(captions):
        top = header + padding + row * (tile_h + padding)
        draw.multiline_text((4, top + 2), caption, fill="black", font=font, spacing=2)
        if notes is not None:
            _write_notes(draw, notes[row], (label_width + padding, top), (tile_w, tile_h), tile_w / width)
    return Grid(
        picture=canvas,
        columns=tuple(columns),
        captions=tuple(captions),
        tile=(tile_h, tile_w),
        padding=padding,
        header=header,
        left=label_width,
    )


def render_grid(
    images: Tensor,
    maps: dict[str, Tensor],
    captions: Sequence[str],
    *,
    colormap: str = "jet",
    alpha: float = 0.5,
    min_tile: int = 112,
    max_tile: int | None = MAX_TILE,
    padding: int = 2,
    regions: Tensor | None = None,
    boxes: Sequence[Tensor] | None = None,
    box_labels: Sequence[Sequence[str]] | None = None,
) -> Grid:
    """A labelled grid: a row per sample, the input then one overlay per entry of ``maps``.

    Args:
        images: display images ``[B, 3, H, W]`` in ``[0, 1]`` (see :func:`display_images`).
        maps: ``{column name: [B, H, W]}`` in ``[0, 1]``, on the images' device.
        captions: one caption per row, written left of the row (one line per ``\\n``).
        colormap: one of :data:`COLORMAPS`.
        alpha: the heat's weight in the overlay.
        min_tile: small images are enlarged (nearest neighbour, integer factor) to at least this size.
        max_tile: larger images are scaled down to this length (``None``: full resolution).
        padding: pixels between tiles.
        regions: ``[B, H, W]`` regions whose outline is drawn on every tile of their row (a
            segmentation label), or ``None``.
        boxes: per row, boxes ``[N, 4]`` (x1, y1, x2, y2 in pixels; a detector's detections) drawn in
            yellow on every tile of the row, or ``None``.
        box_labels: per row, one text per box (its class and score), written at the box's top left
            corner on the input tile only, so that the overlays stay unobstructed.
    """
    columns = [images] + [overlay(images, value, colormap, alpha) for value in maps.values()]
    tiles = torch.stack(columns, dim=1)
    if regions is not None:
        tiles = outline(tiles, regions.to(tiles.device))
    if boxes is not None:
        tiles = draw_boxes(tiles, boxes)
    notes = None
    if boxes is not None and box_labels is not None:
        notes = [
            [(float(x), float(y), text) for (x, y, *_), text in zip(row.tolist(), texts, strict=True)]
            for row, texts in zip(boxes, box_labels, strict=True)
        ]
    return render_table(
        tiles, ("input", *maps), captions, min_tile=min_tile, max_tile=max_tile, padding=padding, notes=notes
    )


def slice_indices(depth: int, count: int) -> list[int]:
    """``count`` evenly spaced slice indices of ``depth`` slices, first and last included (fewer when
    ``depth`` is smaller)."""
    shown = min(count, depth)
    return sorted({round(i * (depth - 1) / max(shown - 1, 1)) for i in range(shown)})


def peak_slices(maps: Tensor) -> Tensor:
    """``[B]``: the slice along ``D`` of each map ``[B, D, H, W]`` that holds its largest value."""
    return maps.flatten(2).amax(dim=2).argmax(dim=1)


def at_slices(volumes: Tensor, index: Tensor) -> Tensor:
    """Slice ``index[b]`` along ``D`` of each volume: maps ``[B, D, H, W]`` -> ``[B, H, W]``, display
    volumes ``[B, 3, D, H, W]`` -> ``[B, 3, H, W]``."""
    rows = torch.arange(len(volumes), device=volumes.device)
    index = index.to(volumes.device)
    return volumes[rows, index] if volumes.dim() == 4 else volumes[rows, :, index]


def render_volume_grid(
    volumes: Tensor,
    maps: dict[str, Tensor],
    captions: Sequence[str],
    *,
    num_slices: int = 5,
    colormap: str = "jet",
    alpha: float = 0.5,
    min_tile: int = 112,
    max_tile: int | None = MAX_TILE,
) -> Grid:
    """Volumes as rows of slices: per sample and method a row of ``num_slices`` evenly spaced slices
    along ``D`` and the slice where that method's map peaks, each with the map overlaid; the columns
    are captioned with the slice index, the row with the sample's caption, the method and its peak.

    Args:
        volumes: display volumes ``[B, 3, D, H, W]`` in ``[0, 1]``.
        maps: ``{method: [B, D, H, W]}`` in ``[0, 1]``.
        captions: one caption per sample.
    """
    depth = volumes.shape[2]
    chosen = slice_indices(depth, num_slices)
    shown = volumes[:, :, chosen].movedim(2, 1)  # [B, S, 3, H, W]
    rows, names = [], []
    for method, value in maps.items():
        peak, flat = peak_slices(value), value.flatten(1).amax(dim=1) <= 0  # a slice without heat is not flat
        sliced = value[:, chosen].flatten(0, 1)
        tiles = overlay(shown.flatten(0, 1), sliced, colormap, alpha, flat.repeat_interleave(len(chosen)))
        tiles = tiles.unflatten(0, shown.shape[:2])
        at_peak = overlay(at_slices(volumes, peak), at_slices(value, peak), colormap, alpha, flat)
        rows.append(torch.cat([tiles, at_peak[:, None]], dim=1))
        names.append(
            [
                f"{caption}\n{method}, peak d={int(d)}"
                for caption, d in zip(captions, peak.tolist(), strict=True)
            ]
        )
    tiles = torch.stack(rows, dim=1).flatten(0, 1)  # sample-major: a sample's methods together
    row_captions = [names[m][b] for b in range(len(captions)) for m in range(len(maps))]
    columns = (*[f"d={d}" for d in chosen], "peak slice")
    return render_table(tiles, columns, row_captions, min_tile=min_tile, max_tile=max_tile)
