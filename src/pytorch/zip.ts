/**
 * The zip container torch.save writes: records stored uncompressed, sizes in the central directory (local headers
 * carry zero sizes and a data descriptor), always a zip64 end record. Only the central directory is read on open;
 * a record's bytes are read on demand, by offset. Every offset and size is checked against the file first.
 */
import type { FileHandle } from 'node:fs/promises';
import { PickleError } from './pickle.js';

export interface ZipRecord {
  name: string;
  /** Bytes (stored: compressed and uncompressed sizes agree). */
  size: number;
  /** Absolute position of the first data byte. */
  dataOffset: number;
}

const EOCD = 0x06054b50;
const ZIP64_LOCATOR = 0x07064b50;
const ZIP64_EOCD = 0x06064b50;
const CENTRAL = 0x02014b50;
const LOCAL = 0x04034b50;
/** Larger central directories than this are not a checkpoint's (a record takes ~100 bytes; 1 GiB is 10M records). */
const MAX_CENTRAL_BYTES = 1 << 30;

export function isZip(prefix: Uint8Array): boolean {
  return prefix.length >= 4 && prefix[0] === 0x50 && prefix[1] === 0x4b && prefix[2] === 0x03 && prefix[3] === 0x04;
}

export async function readAt(handle: FileHandle, label: string, position: number, length: number): Promise<Uint8Array> {
  const out = new Uint8Array(length);
  let done = 0;
  while (done < length) {
    const { bytesRead } = await handle.read(out, done, Math.min(length - done, 1 << 30), position + done);
    if (bytesRead === 0) throw new PickleError(label, 'truncated', `file ended after ${position + done} bytes while reading ${length} bytes at ${position}`);
    done += bytesRead;
  }
  return out;
}

export class ZipArchive {
  private constructor(readonly records: ReadonlyMap<string, ZipRecord>) {}

  static async open(handle: FileHandle, label: string, fileSize: number): Promise<ZipArchive> {
    const bad = (detail: string) => new PickleError(label, 'zip', `not a readable torch.save zip: ${detail}`);
    const tailLength = Math.min(fileSize, 22 + 0xffff + 20);
    const tailStart = fileSize - tailLength;
    const tail = await readAt(handle, label, tailStart, tailLength);
    const tv = new DataView(tail.buffer);
    let eocd = -1;
    for (let i = tailLength - 22; i >= 0; i--) {
      if (tv.getUint32(i, true) === EOCD && i + 22 + tv.getUint16(i + 20, true) === tailLength) {
        eocd = i;
        break;
      }
    }
    if (eocd < 0) throw bad('no end-of-central-directory record (truncated or not a zip)');
    let count = tv.getUint16(eocd + 10, true);
    let cdSize = tv.getUint32(eocd + 12, true);
    let cdOffset = tv.getUint32(eocd + 16, true);
    let cdLimit = tailStart + eocd;
    if (eocd >= 20 && tv.getUint32(eocd - 20, true) === ZIP64_LOCATOR) {
      const at = Number(tv.getBigUint64(eocd - 20 + 8, true));
      if (!Number.isSafeInteger(at) || at + 56 > tailStart + eocd - 20) throw bad('zip64 end record outside the file');
      const rec = await readAt(handle, label, at, 56);
      const rv = new DataView(rec.buffer);
      if (rv.getUint32(0, true) !== ZIP64_EOCD) throw bad('zip64 locator points at no zip64 end record');
      count = safe(rv.getBigUint64(32, true));
      cdSize = safe(rv.getBigUint64(40, true));
      cdOffset = safe(rv.getBigUint64(48, true));
      cdLimit = at;
    }
    if (cdOffset + cdSize > cdLimit) throw bad(`central directory (${cdSize} bytes at ${cdOffset}) runs past its end records`);
    if (cdSize > MAX_CENTRAL_BYTES) throw bad(`central directory of ${cdSize} bytes`);
    if (count * 46 > cdSize) throw bad(`${count} records cannot fit a ${cdSize}-byte central directory`);

    const cd = await readAt(handle, label, cdOffset, cdSize);
    const cv = new DataView(cd.buffer);
    const central: { name: string; size: number; local: number; method: number; flags: number }[] = [];
    let p = 0;
    for (let k = 0; k < count; k++) {
      if (p + 46 > cdSize || cv.getUint32(p, true) !== CENTRAL) throw bad(`central directory entry ${k} is damaged`);
      const flags = cv.getUint16(p + 8, true);
      const method = cv.getUint16(p + 10, true);
      let compressed = cv.getUint32(p + 20, true);
      let size = cv.getUint32(p + 24, true);
      const nameLen = cv.getUint16(p + 28, true);
      const extraLen = cv.getUint16(p + 30, true);
      const commentLen = cv.getUint16(p + 32, true);
      let local = cv.getUint32(p + 42, true);
      const end = p + 46 + nameLen + extraLen + commentLen;
      if (end > cdSize) throw bad(`central directory entry ${k} runs past the directory`);
      const name = new TextDecoder().decode(cd.subarray(p + 46, p + 46 + nameLen));
      // zip64 extra field: the 64-bit values of the fields set to 0xFFFFFFFF, in this order.
      let e = p + 46 + nameLen;
      const extraEnd = e + extraLen;
      while (e + 4 <= extraEnd) {
        const id = cv.getUint16(e, true);
        const len = cv.getUint16(e + 2, true);
        if (e + 4 + len > extraEnd) throw bad(`extra field of ${name} runs past its entry`);
        if (id === 1) {
          let q = e + 4;
          const next = (): number => {
            if (q + 8 > e + 4 + len) throw bad(`zip64 field of ${name} is too short`);
            const v = safe(cv.getBigUint64(q, true));
            q += 8;
            return v;
          };
          if (size === 0xffffffff) size = next();
          if (compressed === 0xffffffff) compressed = next();
          if (local === 0xffffffff) local = next();
        }
        e += 4 + len;
      }
      if (compressed !== size && method === 0) throw bad(`record ${name} is stored with ${compressed} bytes for ${size}`);
      central.push({ name, size, local, method, flags });
      p = end;
    }

    const records = new Map<string, ZipRecord>();
    for (const c of central) {
      if (records.has(c.name)) throw bad(`record ${c.name} appears twice`);
      if (c.method !== 0) throw bad(`record ${c.name} is compressed (method ${c.method}); torch.save stores records uncompressed`);
      if (c.flags & 1) throw bad(`record ${c.name} is encrypted`);
      if (c.local + 30 > cdOffset) throw bad(`record ${c.name}: local header at ${c.local} is outside the data section`);
      const head = await readAt(handle, label, c.local, 30);
      const hv = new DataView(head.buffer);
      if (hv.getUint32(0, true) !== LOCAL) throw bad(`record ${c.name}: no local header at ${c.local}`);
      const dataOffset = c.local + 30 + hv.getUint16(26, true) + hv.getUint16(28, true);
      if (dataOffset + c.size > cdOffset) throw bad(`record ${c.name} (${c.size} bytes at ${dataOffset}) runs past the data section`);
      records.set(c.name, { name: c.name, size: c.size, dataOffset });
    }
    return new ZipArchive(records);
  }
}

function safe(v: bigint): number {
  return v > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(v);
}
