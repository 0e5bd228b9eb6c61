//! The IDX format of MNIST and Fashion-MNIST (`00 00 08 NDIMS`, big-endian u32 dimensions, then
//! unsigned bytes), raw or gzip-compressed, with every header field checked.

use std::io::Read;
use std::path::Path;

use crate::Result;
use crate::error::input_error;

/// An IDX array of unsigned bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdxArray {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// Row-major bytes.
    pub data: Vec<u8>,
}

/// Parses IDX bytes (already decompressed); `what` names the source in errors.
pub fn parse_idx(what: &str, bytes: &[u8]) -> Result<IdxArray> {
    if bytes.len() < 4 {
        return Err(input_error(
            what,
            format!("{} bytes is too short for an IDX header", bytes.len()),
        ));
    }
    if bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 {
        return Err(input_error(
            what,
            format!(
                "bad magic {:02x} {:02x} {:02x} {:02x}: expected an IDX file of unsigned bytes (00 00 08 NDIMS)",
                bytes[0], bytes[1], bytes[2], bytes[3]
            ),
        ));
    }
    let ndims = usize::from(bytes[3]);
    if ndims == 0 || ndims > 4 {
        return Err(input_error(
            what,
            format!("{ndims} dimensions; expected 1 to 4"),
        ));
    }
    let header = 4 + 4 * ndims;
    if bytes.len() < header {
        return Err(input_error(
            what,
            format!("truncated header: {ndims} dimensions need {header} bytes"),
        ));
    }
    let dims: Vec<usize> = (0..ndims)
        .map(|i| {
            u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().expect("4 bytes")) as usize
        })
        .collect();
    let expected = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
    let body = bytes.len() - header;
    if expected != Some(body) {
        let dims_text: Vec<String> = dims.iter().map(usize::to_string).collect();
        return Err(input_error(
            what,
            format!(
                "header says {} = {} bytes of data, the file has {body}",
                dims_text.join("×"),
                expected.map_or("too many".into(), |e| e.to_string())
            ),
        ));
    }
    Ok(IdxArray {
        dims,
        data: bytes[header..].to_vec(),
    })
}

/// The largest IDX body read (2 GiB): larger files are refused before they are read or
/// decompressed.
pub const MAX_IDX_BYTES: usize = 1 << 31;

/// The IDX header at the start of `bytes`: the dimensions and the header's length, if enough
/// bytes are there to tell.
fn header_dims(bytes: &[u8]) -> Option<(Vec<usize>, usize)> {
    let ndims = usize::from(*bytes.get(3)?);
    let header = 4 + 4 * ndims;
    let dims = (0..ndims)
        .map(|i| {
            let b = bytes.get(4 + 4 * i..8 + 4 * i)?;
            Some(u32::from_be_bytes(b.try_into().ok()?) as usize)
        })
        .collect::<Option<Vec<usize>>>()?;
    Some((dims, header))
}

/// Reads an IDX file, gunzipping it when it starts with the gzip magic. A compressed file is
/// decompressed only as far as its header says it holds (a small file cannot expand into
/// gigabytes before its header is checked), and no file over [`MAX_IDX_BYTES`] is read.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let what = path.display().to_string();
    let cannot = |e: std::io::Error| input_error(&what, format!("cannot read ({e})"));
    let mut file = std::fs::File::open(path).map_err(cannot)?;
    let size = file.metadata().map_err(cannot)?.len();
    if size > MAX_IDX_BYTES as u64 {
        return Err(input_error(
            &what,
            format!("{size} bytes; IDX files over {MAX_IDX_BYTES} bytes are not read"),
        ));
    }
    let mut raw = Vec::with_capacity(size as usize);
    file.read_to_end(&mut raw).map_err(cannot)?;
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return parse_idx(&what, &raw);
    }
    let gzip = |e: std::io::Error| input_error(&what, format!("not a valid gzip stream ({e})"));
    let mut decoder = flate2::read::GzDecoder::new(raw.as_slice());
    // The header first (at most 4 + 4·255 bytes), then exactly the body it declares, plus one
    // byte to tell a longer stream.
    let mut bytes = Vec::new();
    (&mut decoder)
        .take(4)
        .read_to_end(&mut bytes)
        .map_err(gzip)?;
    let ndims = usize::from(bytes.get(3).copied().unwrap_or(0));
    (&mut decoder)
        .take(4 * ndims as u64)
        .read_to_end(&mut bytes)
        .map_err(gzip)?;
    let body = header_dims(&bytes)
        .and_then(|(dims, _)| dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d)))
        .filter(|&n| n <= MAX_IDX_BYTES)
        .ok_or_else(|| {
            input_error(
                &what,
                format!("its header declares more than {MAX_IDX_BYTES} bytes of data, or is not an IDX header"),
            )
        })?;
    decoder
        .take(body as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(gzip)?;
    parse_idx(&what, &bytes)
}
