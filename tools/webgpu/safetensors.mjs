// Reads a safetensors file (8-byte little-endian header length, a JSON header, then the raw
// little-endian data) into a Map of name → { dtype, shape, values }, for the f32/i32 tensors
// wgdistill's golden cases hold.

import fs from 'node:fs';

const TYPES = { F32: Float32Array, I32: Int32Array, U32: Uint32Array };

export function readSafetensors(file) {
  const bytes = fs.readFileSync(file);
  const headerLen = Number(bytes.readBigUInt64LE(0));
  const header = JSON.parse(bytes.subarray(8, 8 + headerLen).toString('utf8'));
  const data = bytes.subarray(8 + headerLen);
  const tensors = new Map();
  for (const [name, t] of Object.entries(header)) {
    if (name === '__metadata__') continue;
    const Type = TYPES[t.dtype];
    if (!Type) throw new Error(`${file}: tensor '${name}' has dtype ${t.dtype}, not F32/I32/U32`);
    const [start, end] = t.data_offsets;
    const copy = data.buffer.slice(data.byteOffset + start, data.byteOffset + end);
    tensors.set(name, { dtype: t.dtype, shape: t.shape, values: new Type(copy) });
  }
  return tensors;
}
