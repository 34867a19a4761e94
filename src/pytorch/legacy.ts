/**
 * torch.save's format before 1.6 (`_use_new_zipfile_serialization=False`): five pickles back to back (magic number,
 * protocol version, sys info, the object, the sorted storage keys), then for each key an int64 element count and
 * the storage's raw bytes. Storages carry no sizes of their own beyond that count, so each is checked against the
 * pickle's element count and the bytes left before the next is located.
 */
import { PickleError, PyDict, PyTuple, describe, unpickle, type PyValue, type Unpickled } from './pickle.js';
import { StorageRef, StorageType } from './torch.js';

export const LEGACY_MAGIC = 0x1950a86a20f9469cfc6cn;
const PROTOCOL_VERSION = 1001;

/** A raw pickle stream (PROTO 2 to 5): the legacy format, or a plain pickle that is not a checkpoint. */
export function isPickleStream(prefix: Uint8Array): boolean {
  return prefix.length >= 2 && prefix[0] === 0x80 && prefix[1] >= 2 && prefix[1] <= 5;
}

/** A raw pickle stream whose first opcode is PROTO 2 and whose first value is LONG1 of torch's 10-byte magic. */
export function isLegacy(prefix: Uint8Array): boolean {
  const magic = [0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
  return prefix.length >= magic.length && magic.every((b, i) => prefix[i] === b);
}

export interface LegacyContents {
  root: Unpickled;
  /** Storage key -> absolute offset of its first data byte. */
  dataOffsets: Map<string, number>;
  storages: Map<string, StorageRef>;
}

/**
 * `head` holds the file's first bytes (at least all five pickles; the caller grows it on a 'truncated' error).
 * `readCount(offset)` reads the int64 element count stored at a file offset.
 */
export async function readLegacy(
  label: string,
  head: Uint8Array,
  fileSize: number,
  globals: ReadonlyMap<string, PyValue>,
  readCount: (offset: number) => Promise<bigint>,
): Promise<LegacyContents> {
  const bad = (rule: string, detail: string) => new PickleError(label, rule, detail);
  const plain = (start: number) => unpickle(head, start, { label, globals });
  const magic = plain(0);
  if (magic.value !== LEGACY_MAGIC) {
    const inert = magic.placeholders.length ? `; it names ${magic.placeholders.join(', ')}, kept inert and never called` : '';
    throw bad('legacy-magic', `is a plain pickle (${describe(magic.value)}), not a torch.save checkpoint: it does not start with torch's magic number${inert}`);
  }
  const protocol = plain(magic.end);
  if (protocol.value !== PROTOCOL_VERSION) throw bad('legacy-protocol', `legacy protocol version ${describe(protocol.value)}, expected ${PROTOCOL_VERSION}`);
  const sys = plain(protocol.end);
  if (sys.value instanceof PyDict && sys.value.map.get('little_endian') === false) {
    throw bad('byte-order', 'written on a big-endian machine; onestep reads little-endian checkpoints only');
  }

  const storages = new Map<string, StorageRef>();
  const persistentLoad = (pid: PyValue): PyValue => {
    const f = pid instanceof PyTuple ? pid.items : undefined;
    if (!f || f.length !== 6 || f[0] !== 'storage') throw bad('persistent-id', `persistent id ${describe(pid)} is not ('storage', type, key, location, numel, view)`);
    const [, type, key, , numel, view] = f;
    if (!(type instanceof StorageType)) throw bad('storage-type', `storage type ${describe(type)} is not a torch storage class`);
    if (typeof key !== 'string' || typeof numel !== 'number' || !Number.isSafeInteger(numel) || numel < 0) {
      throw bad('persistent-id', `storage ${describe(key)} has element count ${describe(numel)}`);
    }
    let root = storages.get(key);
    if (!root) storages.set(key, (root = new StorageRef(key, type, numel)));
    else if (root.type !== type || root.numel !== numel) throw bad('persistent-id', `storage '${key}' is named with two types or sizes`);
    if (view === null) return root;
    // Pre-1.0 storage views: (view key, offset in the root, view size), all in elements.
    const v = view instanceof PyTuple ? view.items : [];
    const [, offset, size] = v;
    if (v.length !== 3 || typeof offset !== 'number' || typeof size !== 'number' || offset < 0 || size < 0 || offset + size > numel) {
      throw bad('persistent-id', `storage view ${describe(view)} of '${key}' does not fit its ${numel} elements`);
    }
    return new StorageRef(key, type, size, offset);
  };
  const root = unpickle(head, sys.end, { label, globals, persistentLoad });
  const keysPickle = plain(root.end);
  const keys = keysPickle.value;
  if (!Array.isArray(keys) || !keys.every((k) => typeof k === 'string')) throw bad('legacy-keys', 'the storage key list is not a list of strings');

  const dataOffsets = new Map<string, number>();
  let at = keysPickle.end;
  for (const key of keys as string[]) {
    const s = storages.get(key);
    if (!s) throw bad('legacy-keys', `storage '${key}' is listed but no tensor uses it`);
    if (dataOffsets.has(key)) throw bad('legacy-keys', `storage '${key}' is listed twice`);
    if (at + 8 > fileSize) throw bad('storage-truncated', `truncated: storage '${key}' has no element count (file ends at ${fileSize})`);
    const count = await readCount(at);
    if (count !== BigInt(s.numel)) throw bad('legacy-numel', `storage '${key}': element count ${count} in the data section, ${s.numel} in the pickle`);
    const nbytes = s.numel * s.type.itemsize;
    if (at + 8 + nbytes > fileSize) throw bad('storage-truncated', `truncated: storage '${key}' needs ${nbytes} bytes, ${fileSize - at - 8} left`);
    dataOffsets.set(key, at + 8);
    at += 8 + nbytes;
  }
  for (const key of storages.keys()) if (!dataOffsets.has(key)) throw bad('missing-storage', `storage '${key}' is used but not in the data section`);
  return { root, dataOffsets, storages };
}
