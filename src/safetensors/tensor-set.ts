/**
 * One logical set of tensors: a single tensor file (.safetensors, or a PyTorch .bin/.ckpt/.pt/.pth read without
 * executing it), or shards listed by a *.safetensors.index.json / *.bin.index.json.
 */
import { statSync, type Dirent } from 'node:fs';
import { readFile, readdir, stat } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, normalize, sep } from 'node:path';
import type { Allocator } from '../io/buffers.js';
import { SafetensorsError } from './errors.js';
import type { ByteRange, TensorInfo } from './reader.js';
import { PICKLE_EXTENSION, isPyTorchFile, openTensorFile, type TensorFile } from './tensor-file.js';

const INDEX_FILE = /\.(safetensors|bin)\.index(\.[^./\\]+)?\.json$/i;
const SAFETENSORS_INDEX = /\.safetensors\.index(\.[^./\\]+)?\.json$/i;
/** diffusers/transformers variant names we do not prefer when a plain file is also there (fp16, ema, non_ema). */
const VARIANT = /(^|[._-])(fp16|ema)([._-]|$)/i;

export class TensorSet {
  private constructor(
    readonly files: TensorFile[],
    private readonly fileOf: Map<string, TensorFile>,
  ) {}

  /**
   * A tensor file, an index, or a folder holding one of those: the safetensors index, else the one .safetensors,
   * else the .bin index, else the one PyTorch checkpoint (diffusers' and transformers' order of preference).
   */
  static async open(path: string): Promise<TensorSet> {
    const st = await stat(path).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') throw new SafetensorsError(path, 'not-found', 'no such file or folder', undefined, 'Check the path.');
      throw e;
    });
    const target = st.isDirectory() ? await pickInFolder(path) : path;
    const { files, fileOf } = INDEX_FILE.test(target) ? await openIndex(target) : await openSingle(target);
    return new TensorSet(files, fileOf);
  }

  get metadata(): Readonly<Record<string, string>> {
    return this.files[0]?.metadata ?? {};
  }

  /** Tensor names, file by file in data order. */
  names(): string[] {
    return [...this.fileOf.keys()];
  }

  has(name: string): boolean {
    return this.fileOf.has(name);
  }

  /** For each PyTorch checkpoint in the set, how it was read (container, where the weights were, inert placeholders). */
  pickleNotes(): string[] {
    return this.files.filter(isPyTorchFile).map((f) => f.describe());
  }

  info(name: string): TensorInfo & { file: TensorFile } {
    const file = this.fileOf.get(name);
    if (!file) {
      const where = this.files.length === 1 ? this.files[0].path : `${this.files.length} shards starting ${this.files[0]?.path}`;
      throw new SafetensorsError(where, 'missing-tensor', 'no tensor with this name', name, 'Check the tensor name.');
    }
    return { ...file.info(name), file };
  }

  readRaw(name: string, alloc?: Allocator, range?: ByteRange): Promise<Uint8Array> {
    return this.info(name).file.readRaw(name, alloc, range);
  }

  readF32(name: string, range?: ByteRange): Promise<Float32Array> {
    return this.info(name).file.readF32(name, range);
  }

  readF16(name: string): Promise<Uint16Array> {
    return this.info(name).file.readF16(name);
  }

  async close(): Promise<void> {
    await Promise.all(this.files.map((f) => f.close()));
  }
}

interface Opened {
  files: TensorFile[];
  fileOf: Map<string, TensorFile>;
}

async function openSingle(path: string): Promise<Opened> {
  const file = await openTensorFile(path);
  return { files: [file], fileOf: new Map([...file.tensors.keys()].map((name) => [name, file])) };
}

async function openIndex(indexPath: string): Promise<Opened> {
  let index: unknown;
  try {
    index = JSON.parse(await readFile(indexPath, 'utf8'));
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code) throw e;
    throw new SafetensorsError(indexPath, 'index-json', `index is not valid JSON (${(e as Error).message})`);
  }
  const weightMap = (index as { weight_map?: unknown } | null)?.weight_map;
  if (typeof weightMap !== 'object' || weightMap === null || Array.isArray(weightMap)) {
    throw new SafetensorsError(indexPath, 'index-weight-map', 'index has no "weight_map" object');
  }
  const shardNames = new Set<string>();
  for (const [name, shard] of Object.entries(weightMap)) {
    if (typeof shard !== 'string' || shard === '' || isAbsolute(shard) || normalize(shard).split(sep).includes('..')) {
      throw new SafetensorsError(indexPath, 'index-weight-map', `shard ${JSON.stringify(shard)} is not a file name next to the index`, name);
    }
    shardNames.add(shard);
  }
  if (shardNames.size === 0) throw new SafetensorsError(indexPath, 'index-weight-map', 'weight_map is empty');

  const files: TensorFile[] = [];
  try {
    const byShard = new Map<string, TensorFile>();
    for (const shard of [...shardNames].sort()) {
      const file = await openTensorFile(join(dirname(indexPath), shard));
      files.push(file);
      byShard.set(shard, file);
    }
    const wanted = new Map(Object.entries(weightMap as Record<string, string>).map(([name, shard]) => [name, byShard.get(shard)!]));
    for (const [name, file] of wanted) {
      if (!file.tensors.has(name)) {
        throw new SafetensorsError(indexPath, 'index-missing-tensor', `weight_map puts this tensor in ${basename(file.path)}, which does not hold it`, name);
      }
    }
    const fileOf = new Map<string, TensorFile>();
    for (const file of files) for (const name of file.tensors.keys()) if (wanted.get(name) === file) fileOf.set(name, file);
    return { files, fileOf };
  } catch (e) {
    await Promise.all(files.map((f) => f.close()));
    throw e;
  }
}

/** The one index (else the one tensor file) in a folder; variants (fp16, ema) only when nothing plainer is there. */
async function pickInFolder(folder: string): Promise<string> {
  // Symlinked files count: a Hugging Face hub cache snapshot holds nothing but links into ../blobs.
  const isFileEntry = (e: Dirent) => e.isFile() || (e.isSymbolicLink() && statSync(join(folder, e.name), { throwIfNoEntry: false })?.isFile() === true);
  const entries = (await readdir(folder, { withFileTypes: true })).filter(isFileEntry).map((e) => e.name).sort();
  const groups: [string, string[]][] = [
    ['safetensors index files', entries.filter((n) => SAFETENSORS_INDEX.test(n))],
    ['safetensors files', entries.filter((n) => /\.safetensors$/i.test(n))],
    ['.bin index files', entries.filter((n) => INDEX_FILE.test(n) && !SAFETENSORS_INDEX.test(n))],
    ['PyTorch checkpoints', entries.filter((n) => PICKLE_EXTENSION.test(n))],
  ];
  const found = groups.find(([, names]) => names.length > 0);
  if (!found) {
    throw new SafetensorsError(
      folder,
      'not-found',
      'holds no tensor file (.safetensors, *.safetensors.index.json, or a PyTorch .bin / .ckpt / .pt / .pth)',
      undefined,
      'Check the path.',
    );
  }
  const [kind, candidates] = found;
  if (candidates.length === 1) return join(folder, candidates[0]);
  const plain = candidates.filter((n) => !VARIANT.test(n));
  if (plain.length === 1) return join(folder, plain[0]);
  // Training folders keep other pickles beside the weights (training_args.bin, optimizer.pt, rng_state.pth).
  const weights = plain.filter((n) => /^(diffusion_pytorch_model|pytorch_model|model)\.(bin|pt|pth|ckpt)$/i.test(n));
  if (weights.length === 1) return join(folder, weights[0]);
  throw new SafetensorsError(
    folder,
    'ambiguous',
    `holds several ${kind} and no single obvious one: ${candidates.join(', ')}`,
    undefined,
    'Pass the file you mean directly.',
  );
}
