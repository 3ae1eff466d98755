r"""Image reading: microscopy files into the one shape every model here eats (torch-free).

Modules: `formats` (what is read), `errors`, `settings` (`Preprocessing`), `decode`, `plane_keys`,
`planes`, `normalise`, `read` (`read_image`, `load_for_model`), `preview`, `folders` (keys),
`project_reading`.

Microscopes write PNG/JPEG (brightfield, 8-bit RGB), TIFF in its many flavours (ImageJ
hyperstacks, OME-TIFF, MetaMorph, slide-scanner SVS/NDPI pyramids; 8/12/16-bit or float;
LZW/Deflate/JPEG/JPEG 2000/zstd/PackBits compressed) and vendor formats (Zeiss CZI, Nikon ND2,
Leica LIF). Everything becomes float32 (H, W, 3) in [0, 1] by four documented steps:

1. **decode** with the field's readers: tifffile + imagecodecs for TIFF and 16-bit PNG, Pillow
   for 8-bit PNG/JPEG/BMP, the bioio family (optional extra ``pip install 'scopeloop[formats]'``)
   for CZI/ND2/LIF and OME-Zarr folders (``*.zarr``, bioio-ome-zarr). Slide-scanner pyramids: the full-resolution level. Multi-series files
   (scenes, thumbnails, labels): the first series. EXIF/TIFF orientation is applied.
2. **axes** come from the file's metadata (tifffile's ``series.axes`` for ImageJ, OME, MetaMorph,
   SVS, NDPI ...; bioio's dims for vendor formats): C (and RGB samples S) are colours, Z and T
   never are. Only a TIFF without axis metadata falls back to the shape: one leading axis of
   <= 16 planes smaller than the image is channels (a 3 x 12 x 12 crop is 3 channels), a longer
   one is a Z-stack, a trailing short axis after a long one is channel-last. An ImageJ stack with
   fewer pages than its metadata announces (saving interrupted) keeps its axes: its complete
   time points are read, or it is refused when it has none. An OME-Zarr folder in the
   bioformats2raw layout (``0/``, ``OME/``) reads its first series.
3. **stack -> plane** (`Preprocessing`, recorded in the model's config): T -> one time point
   (``timepoint``, default 0, the first); Z -> maximum-intensity projection (``stack="mip"``,
   default; fluorescence), the best-focus plane (``stack="best-focus"``, variance of the Laplacian,
   `trainer.io.best_focus`; chosen by `project_reading` at a first init when the stacks are
   brightfield), one plane (``stack="plane"``, ``plane`` index, default the middle one) or each plane
   its own image (``stack="planes"``: `expand_planes` lists a Z-stack ``cells.tif`` of 5 planes as
   ``cells.tif#z0`` ... ``cells.tif#z4``, one task each; a path ending ``#z<k>`` reads plane k,
   unless a file of exactly that name exists); any other axis (tiles, views, lambda) -> its
   first index.
4. **intensities** (``normalisation``): ``per-image`` (default): 8-bit divided by 255 (its look
   is already meaningful, as in the ImageNet photos the backbone learned from); 16-bit, 32-bit,
   signed and float images get a per-image, per-channel robust stretch: the 0.5th percentile
   maps to 0 and the 99.8th to 1 (exposure drift between plates cancels out).
   ``per-dataset``: one fixed (lo, hi) per channel for every image, computed once from a sample
   of the pool (`dataset_ranges`): absolute differences (DNA content, expression level) survive.
   ``bit-depth``: a fixed division by 2**bits - 1 (``bit_depth``, e.g. 12 for a 12-bit camera
   writing 16-bit samples; default the sample type's own depth).
   ``both`` (single-channel images only): R and B the per-image stretch, G the per-dataset
   range: a grey image leaves two of the backbone's three inputs as copies, one of them carries
   the absolute intensity (measured in docs/benchmarks.md, "Intensity normalisation").
   Then channels -> the backbone's 3 inputs (the documented mapping):
   1 channel -> copied to R, G and B;  2 channels -> R = ch0, G = ch1, B = 0;
   3 channels -> R, G, B;  4 channels from PNG/JPEG (RGBA) -> alpha dropped;
   N > 3 channels -> the first three, unless ``channels=[i, j, k]`` picks others
   (1, 2 or 3 indices, mapped like 1/2/3-channel images).

A file that cannot be read raises `ImageReadError`, naming the file and the reason (for a
vendor format without its reader: the exact install command); batch readers catch it, skip
the image and record it in a `SkipReport`.

File names: any byte sequence the file system allows. A name that is not valid UTF-8 gets a
key in which every undecodable byte is written ``\xNN`` (Python's ``backslashreplace``), so keys
are always valid UTF-8 in CSV/JSON; `path_for_key` maps such a key back to the file.
"""
