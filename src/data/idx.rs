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

/// Reads an IDX file, gunzipping it when it starts with the gzip magic.
pub fn read_idx(path: &Path) -> Result<IdxArray> {
    let what = path.display().to_string();
    let raw = std::fs::read(path).map_err(|e| input_error(&what, format!("cannot read ({e})")))?;
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut out)
            .map_err(|e| input_error(&what, format!("not a valid gzip stream ({e})")))?;
        out
    } else {
        raw
    };
    parse_idx(&what, &bytes)
}
