/**
 * POSIX ustar archives, written and read by us (webdataset shards). Headers are deterministic (mtime 0, uid/gid 0,
 * mode 0644, no user or group names), so the same members give byte-identical archives. Names longer than the
 * 100-byte ustar field go in a PAX extended header (`path=`), which GNU tar, bsdtar and Python's tarfile read.
 */
import { open, type FileHandle } from 'node:fs/promises';
import { BadInputError } from '../errors.js';

export const BLOCK = 512;
const NAME_BYTES = 100;

function octal(value: number, width: number): string {
  // width - 1 digits and a NUL, as GNU tar writes them.
  return value.toString(8).padStart(width - 1, '0') + '\0';
}

function header(name: Buffer, size: number, type: '0' | 'x'): Buffer {
  if (size > 0o77777777777) throw new Error(`tar member of ${size} bytes is over the ustar limit of 8 GiB`);
  const h = Buffer.alloc(BLOCK);
  name.copy(h, 0, 0, Math.min(name.length, NAME_BYTES));
  h.write(octal(0o644, 8), 100, 'latin1');
  h.write(octal(0, 8), 108, 'latin1');
  h.write(octal(0, 8), 116, 'latin1');
  h.write(octal(size, 12), 124, 'latin1');
  h.write(octal(0, 12), 136, 'latin1');
  h.fill(0x20, 148, 156); // the checksum is computed with its own field as spaces
  h.write(type, 156, 'latin1');
  h.write('ustar\0', 257, 'latin1');
  h.write('00', 263, 'latin1');
  h.write(octal(0, 8), 329, 'latin1');
  h.write(octal(0, 8), 337, 'latin1');
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += h[i];
  h.write(sum.toString(8).padStart(6, '0') + '\0 ', 148, 'latin1');
  return h;
}

function padding(size: number): Buffer {
  return Buffer.alloc((BLOCK - (size % BLOCK)) % BLOCK);
}

/** A PAX record "<len> path=<name>\n", where <len> counts the whole record including its own digits. */
function paxRecord(key: string, value: string): Buffer {
  const body = ` ${key}=${value}\n`;
  const bodyBytes = Buffer.byteLength(body);
  let len = bodyBytes + 1;
  while (String(len).length + bodyBytes !== len) len = String(len).length + bodyBytes;
  return Buffer.from(`${len}${body}`, 'utf8');
}

/** The bytes of one member: header (PAX header first for a long or non-ASCII name), data, padding to 512. */
export function tarMember(name: string, data: Uint8Array): Buffer {
  if (name === '' || name.includes('\0')) throw new Error(`invalid tar member name ${JSON.stringify(name)}`);
  const nameBytes = Buffer.from(name, 'utf8');
  const parts: Buffer[] = [];
  if (nameBytes.length > NAME_BYTES || !/^[\x20-\x7e]*$/.test(name)) {
    const pax = paxRecord('path', name);
    parts.push(header(Buffer.from('PaxHeader', 'latin1'), pax.length, 'x'), pax, padding(pax.length));
  }
  parts.push(header(nameBytes.subarray(0, NAME_BYTES), data.length, '0'), Buffer.from(data.buffer, data.byteOffset, data.byteLength), padding(data.length));
  return Buffer.concat(parts);
}

/** The end of an archive: two zero blocks. */
export const TAR_END = Buffer.alloc(2 * BLOCK);

/** Writes a whole archive of `members` in the order given. */
export function tarArchive(members: Iterable<{ name: string; data: Uint8Array }>): Buffer {
  const parts: Buffer[] = [];
  for (const m of members) parts.push(tarMember(m.name, m.data));
  parts.push(TAR_END);
  return Buffer.concat(parts);
}

export interface TarEntry {
  name: string;
  /** Byte offset of the member's data in the archive. */
  offset: number;
  size: number;
}

function parseOctal(h: Buffer, start: number, width: number): number {
  const text = h.toString('latin1', start, start + width).replace(/[\0 ]+$/, '').trim();
  if (!/^[0-7]*$/.test(text)) return NaN;
  return text === '' ? 0 : parseInt(text, 8);
}

function cString(h: Buffer, start: number, width: number): string {
  const end = h.indexOf(0, start);
  return h.toString('utf8', start, end < 0 || end > start + width ? start + width : end);
}

function parsePax(data: Buffer): Record<string, string> {
  const out: Record<string, string> = {};
  let at = 0;
  while (at < data.length) {
    const space = data.indexOf(0x20, at);
    if (space < 0) break;
    const len = Number(data.toString('latin1', at, space));
    if (!Number.isInteger(len) || len <= 0) break;
    const record = data.toString('utf8', space + 1, at + len - 1);
    const eq = record.indexOf('=');
    if (eq > 0) out[record.slice(0, eq)] = record.slice(eq + 1);
    at += len;
  }
  return out;
}

/**
 * Lists the regular-file members of a tar archive (ustar, with PAX `path` and GNU long names), reading only the
 * headers. A bad checksum or an archive cut short is a BadInputError naming the file.
 */
export async function listTar(file: string): Promise<TarEntry[]> {
  const handle = await open(file, 'r');
  try {
    return await listTarHandle(handle, file);
  } finally {
    await handle.close();
  }
}

async function readExactly(handle: FileHandle, length: number, position: number, file: string): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  let got = 0;
  while (got < length) {
    const { bytesRead } = await handle.read(buf, got, length - got, position + got);
    if (bytesRead === 0) throw new BadInputError(file, `is cut short at byte ${position + got} (a tar archive that was not finished).`);
    got += bytesRead;
  }
  return buf;
}

async function listTarHandle(handle: FileHandle, file: string): Promise<TarEntry[]> {
  const size = (await handle.stat()).size;
  const entries: TarEntry[] = [];
  let at = 0;
  let longName: string | undefined;
  while (at + BLOCK <= size) {
    const h = await readExactly(handle, BLOCK, at, file);
    if (h.every((b) => b === 0)) return entries;
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : h[i];
    if (parseOctal(h, 148, 8) !== sum) throw new BadInputError(file, `has a bad tar header checksum at byte ${at}.`);
    const memberSize = parseOctal(h, 124, 12);
    const type = String.fromCharCode(h[156] || 0x30);
    const dataAt = at + BLOCK;
    if (dataAt + memberSize > size) throw new BadInputError(file, `is cut short inside a member at byte ${dataAt}.`);
    if (type === 'x' || type === 'L') {
      const data = await readExactly(handle, memberSize, dataAt, file);
      longName = type === 'x' ? parsePax(data).path ?? longName : data.toString('utf8').replace(/\0+$/, '');
    } else {
      if (type === '0' || type === '7') {
        const prefix = h.toString('latin1', 257, 262) === 'ustar' ? cString(h, 345, 155) : '';
        const name = longName ?? (prefix ? `${prefix}/${cString(h, 0, NAME_BYTES)}` : cString(h, 0, NAME_BYTES));
        entries.push({ name, offset: dataAt, size: memberSize });
      }
      longName = undefined;
    }
    at = dataAt + memberSize + ((BLOCK - (memberSize % BLOCK)) % BLOCK);
  }
  throw new BadInputError(file, 'ends without the two zero blocks that close a tar archive (it was not finished).');
}

/** Reads every member's data: for tests and small archives. */
export async function readTar(file: string): Promise<{ name: string; data: Buffer }[]> {
  const handle = await open(file, 'r');
  try {
    const entries = await listTarHandle(handle, file);
    const out: { name: string; data: Buffer }[] = [];
    for (const e of entries) out.push({ name: e.name, data: await readExactly(handle, e.size, e.offset, file) });
    return out;
  } finally {
    await handle.close();
  }
}
