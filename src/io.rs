//! Named host tensors and safetensors files: what `wgdistill op` reads and writes, and how golden
//! cases and checkpoints are stored.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;

use safetensors::{Dtype, SafeTensors, View};

use crate::error::{Result, input_error};

/// Host-side element data.
#[derive(Clone, Debug, PartialEq)]
pub enum HostData {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// 32-bit signed integers (i64 files are narrowed on load, with a range check).
    I32(Vec<i32>),
    /// 8-bit signed integers (int8 weights).
    I8(Vec<i8>),
}

/// A tensor in host memory.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    /// Shape.
    pub shape: Vec<usize>,
    /// Elements, row-major.
    pub data: HostData,
}

impl HostTensor {
    /// An f32 tensor.
    pub fn f32(shape: &[usize], data: Vec<f32>) -> Self {
        Self {
            shape: shape.to_vec(),
            data: HostData::F32(data),
        }
    }

    /// An i32 tensor.
    pub fn i32(shape: &[usize], data: Vec<i32>) -> Self {
        Self {
            shape: shape.to_vec(),
            data: HostData::I32(data),
        }
    }

    /// The f32 elements, if that is the dtype.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match &self.data {
            HostData::F32(v) => Some(v),
            _ => None,
        }
    }

    /// An int8 tensor.
    pub fn i8(shape: &[usize], data: Vec<i8>) -> Self {
        Self {
            shape: shape.to_vec(),
            data: HostData::I8(data),
        }
    }

    /// The values of an int8 tensor.
    pub fn as_i8(&self) -> Option<&[i8]> {
        match &self.data {
            HostData::I8(v) => Some(v),
            _ => None,
        }
    }

    /// The i32 elements, if that is the dtype.
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            HostData::I32(v) => Some(v),
            _ => None,
        }
    }

    /// `f32`, `i32` or `i8`.
    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            HostData::F32(_) => "f32",
            HostData::I32(_) => "i32",
            HostData::I8(_) => "i8",
        }
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        match self.data {
            HostData::F32(_) => Dtype::F32,
            HostData::I32(_) => Dtype::I32,
            HostData::I8(_) => Dtype::I8,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match &self.data {
            HostData::F32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            HostData::I32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            HostData::I8(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        }
    }
    fn data_len(&self) -> usize {
        match &self.data {
            HostData::F32(v) => v.len() * 4,
            HostData::I32(v) => v.len() * 4,
            HostData::I8(v) => v.len(),
        }
    }
}

/// Named tensors, in name order.
pub type TensorMap = BTreeMap<String, HostTensor>;

fn le_words<const N: usize>(bytes: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    bytes
        .chunks_exact(N)
        .map(|c| c.try_into().expect("chunk of N bytes"))
}

/// Parses safetensors bytes (`what` names the source in errors). F32, F64 (narrowed), I32, I64
/// (range-checked) and I8 are accepted.
pub fn parse_safetensors(what: &str, bytes: &[u8]) -> Result<TensorMap> {
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| input_error(what, format!("not a safetensors file ({e})")))?;
    let mut out = TensorMap::new();
    for (name, view) in st.iter() {
        let shape = view.shape().to_vec();
        let raw = view.data();
        let data = match view.dtype() {
            Dtype::F32 => HostData::F32(le_words::<4>(raw).map(f32::from_le_bytes).collect()),
            Dtype::F64 => HostData::F32(
                le_words::<8>(raw)
                    .map(|w| f64::from_le_bytes(w) as f32)
                    .collect(),
            ),
            Dtype::I32 => HostData::I32(le_words::<4>(raw).map(i32::from_le_bytes).collect()),
            Dtype::I8 => HostData::I8(bytemuck::cast_slice(raw).to_vec()),
            Dtype::I64 => {
                let mut v = Vec::with_capacity(raw.len() / 8);
                for w in le_words::<8>(raw) {
                    let x = i64::from_le_bytes(w);
                    v.push(i32::try_from(x).map_err(|_| {
                        input_error(
                            what,
                            format!("tensor '{name}': value {x} does not fit in i32"),
                        )
                    })?);
                }
                HostData::I32(v)
            }
            other => {
                return Err(input_error(
                    what,
                    format!("tensor '{name}' has dtype {other:?}; expected F32, F64, I32 or I64"),
                ));
            }
        };
        out.insert(name.to_string(), HostTensor { shape, data });
    }
    Ok(out)
}

/// Reads a safetensors file.
pub fn read_safetensors(path: &Path) -> Result<TensorMap> {
    let what = path.display().to_string();
    let bytes =
        std::fs::read(path).map_err(|e| input_error(&what, format!("cannot read ({e})")))?;
    parse_safetensors(&what, &bytes)
}

/// The safetensors bytes of `tensors` (`path` names the file in errors).
pub fn serialize_safetensors(path: &Path, tensors: &TensorMap) -> Result<Vec<u8>> {
    safetensors::serialize(tensors.iter().map(|(k, v)| (k.as_str(), v)), None).map_err(|e| {
        input_error(
            path.display().to_string(),
            format!("cannot serialise ({e})"),
        )
    })
}

/// Writes a safetensors file atomically (see [`write_atomic`]).
pub fn write_safetensors(path: &Path, tensors: &TensorMap) -> Result<()> {
    write_atomic(path, &serialize_safetensors(path, tensors)?)
}

/// Writes a file through a temporary file beside it and a rename, so a crash never leaves a
/// half-written file where a good one was.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp);
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| input_error(path.display().to_string(), format!("cannot write ({e})")))
}

/// Writes single-channel images as one greyscale PNG grid, `cols` images per row, each pixel
/// `scale × scale`, with a 1-pixel dark border between images; `to_unit` maps a stored value to
/// [0, 1] (clamped). Written atomically (see [`write_atomic`]).
pub fn write_png_grid(
    path: &Path,
    images: &[f32],
    [h, w]: [usize; 2],
    cols: usize,
    scale: usize,
    to_unit: impl Fn(f32) -> f32,
) -> Result<()> {
    let per = h * w;
    let count = images.len() / per.max(1);
    if per == 0 || cols == 0 || scale == 0 || count == 0 || !images.len().is_multiple_of(per) {
        return Err(input_error(
            path.display().to_string(),
            format!("cannot lay {} values out as {h}×{w} images", images.len()),
        ));
    }
    let rows = count.div_ceil(cols);
    let (cell_h, cell_w) = (h * scale + 1, w * scale + 1);
    let (height, width) = (rows * cell_h + 1, cols * cell_w + 1);
    let mut pixels = vec![32u8; height * width];
    for (k, image) in images.chunks(per).enumerate() {
        let (top, left) = (1 + (k / cols) * cell_h, 1 + (k % cols) * cell_w);
        for (p, &v) in image.iter().enumerate() {
            let grey = (to_unit(v).clamp(0.0, 1.0) * 255.0).round() as u8;
            for dy in 0..scale {
                let row = top + (p / w) * scale + dy;
                let start = row * width + left + (p % w) * scale;
                pixels[start..start + scale].fill(grey);
            }
        }
    }
    let mut bytes = Vec::new();
    let fail = |e: png::EncodingError| {
        input_error(
            path.display().to_string(),
            format!("cannot encode a PNG ({e})"),
        )
    };
    {
        let mut encoder = png::Encoder::new(&mut bytes, width as u32, height as u32);
        encoder.set_color(png::ColorType::Grayscale);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(fail)?;
        writer.write_image_data(&pixels).map_err(fail)?;
    }
    write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::write_png_grid;

    /// Two 2×3 images in a grid of one column at scale 2: the PNG decodes to the laid-out
    /// pixels (borders dark, values mapped and clamped); a size that is not whole images fails.
    #[test]
    fn a_png_grid_holds_the_images_where_they_belong() {
        let path = std::env::temp_dir().join(format!("wgdistill-grid-{}.png", std::process::id()));
        let images = [0.0, 0.5, 1.0, 2.0, -1.0, 0.25, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0];
        write_png_grid(&path, &images, [2, 3], 1, 2, |v| v).unwrap();
        let decoder =
            png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        // Width 1 + (3·2 + 1); height 1 + 2·(2·2 + 1).
        assert_eq!((info.width, info.height), (8, 11));
        let at = |r: usize, c: usize| buf[r * 8 + c];
        assert_eq!(at(0, 0), 32);
        assert_eq!((at(1, 1), at(2, 2), at(1, 3), at(1, 5)), (0, 0, 128, 255));
        assert_eq!((at(3, 1), at(3, 3), at(3, 5)), (255, 0, 64));
        assert_eq!(at(5, 3), 32, "the border between the images");
        assert_eq!(at(6, 1), 255);
        let e = write_png_grid(&path, &images[..5], [2, 3], 1, 2, |v| v).unwrap_err();
        assert!(e.to_string().contains("2×3 images"), "{e}");
        let _ = std::fs::remove_file(path);
    }
}
