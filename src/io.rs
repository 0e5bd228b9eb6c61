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
            HostData::I32(_) => None,
        }
    }

    /// The i32 elements, if that is the dtype.
    pub fn as_i32(&self) -> Option<&[i32]> {
        match &self.data {
            HostData::I32(v) => Some(v),
            HostData::F32(_) => None,
        }
    }

    /// `f32` or `i32`.
    pub fn dtype_name(&self) -> &'static str {
        match self.data {
            HostData::F32(_) => "f32",
            HostData::I32(_) => "i32",
        }
    }
}

impl View for &HostTensor {
    fn dtype(&self) -> Dtype {
        match self.data {
            HostData::F32(_) => Dtype::F32,
            HostData::I32(_) => Dtype::I32,
        }
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        match &self.data {
            HostData::F32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
            HostData::I32(v) => Cow::Borrowed(bytemuck::cast_slice(v)),
        }
    }
    fn data_len(&self) -> usize {
        match &self.data {
            HostData::F32(v) => v.len() * 4,
            HostData::I32(v) => v.len() * 4,
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

/// Parses safetensors bytes (`what` names the source in errors). F32, F64 (narrowed), I32 and I64
/// (range-checked) are accepted.
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
