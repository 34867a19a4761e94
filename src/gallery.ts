/**
 * `onestep gallery <output folder>`: a contact sheet of a generate run, opened from disk (file://, no server).
 *
 * Writes `index.html` beside the images and, in `.gallery/`, a WebP thumbnail per image (made once: kept while it is
 * newer than its image) and the card data as `data-NNNNN.js` scripts (a page opened from disk cannot fetch JSON,
 * but it can load scripts). The page shows one page of cards at a time (prompt, seed, size, model; the thumbnail
 * links to the full image), filters by text across everything it knows, and keeps page and filter in the URL hash
 * (`#q=cat&page=3`). `.gallery` is hidden so that Hugging Face `datasets` still loads the folder as an imagefolder.
 * Images in webdataset shards get their thumbnails from the tar members; their cards link to the shard (a browser
 * cannot open a member inside a tar).
 */
import { createReadStream } from 'node:fs';
import { mkdir, open, readdir, rename, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import sharp from 'sharp';
import { BadInputError } from './errors.js';
import { removeStaleTemps, tempPathFor, writeFileAtomic } from './io/atomic.js';
import { splitLines } from './io/lines.js';
import { MANIFEST_FILE } from './io/manifest.js';
import { listTar, type TarEntry } from './io/tar.js';

export const GALLERY_DIR = '.gallery';
export const THUMBS_DIR = 'thumbs';
export const GALLERY_INDEX = 'index.html';
/** Longest side of a thumbnail; smaller images keep their size. */
export const DEFAULT_THUMB_SIZE = 256;
export const DEFAULT_PAGE_SIZE = 100;
/** Cards per data script. */
const CHUNK = 5000;

export interface GalleryOptions {
  dir: string;
  thumbSize?: number;
  pageSize?: number;
  /** Thumbnails made at once (sharp also uses its own threads within each). */
  concurrency?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface GallerySummary {
  index: string;
  images: number;
  thumbnails_made: number;
  thumbnails_kept: number;
  /** Manifest lines whose image is no longer on disk (its file, or its shard or its member in the shard): not shown. */
  left_out: number;
  seconds: number;
}

/** One card: [file, thumbnail (in .gallery/thumbs), prompt, negative prompt, seed, width, height, model, index, shard or '']. */
type Card = [string, string, string, string, string, number, number, string, number, string];

interface Row {
  file: string;
  prompt: string;
  negative: string;
  seed: string;
  width: number;
  height: number;
  model: string;
}

/** The last manifest line of each index, in index order. */
async function readRuns(dir: string): Promise<Map<number, Row & { shard?: string }>> {
  const file = path.join(dir, MANIFEST_FILE);
  const rows = new Map<number, Row & { shard?: string }>();
  try {
    await stat(file);
  } catch {
    throw new BadInputError(dir, `has no ${MANIFEST_FILE}: it is not the output folder of onestep generate.`, 'Give the folder passed to generate -o.');
  }
  for await (const raw of splitLines(createReadStream(file), Number.MAX_SAFE_INTEGER)) {
    const text = raw.bytes.toString('utf8').trim();
    if (!text.endsWith('}')) continue; // blank, or the torn last line of a killed run
    let e: Record<string, unknown>;
    try {
      e = JSON.parse(text);
    } catch {
      throw new BadInputError(`${file}:${raw.line}`, 'is not a manifest entry (a JSON object).', 'Remove or fix that line.');
    }
    if (typeof e.index !== 'number' || typeof e.file !== 'string') continue;
    const model = typeof e.model_name === 'string' ? e.model_name : typeof e.model === 'string' ? e.model.slice(0, 10) : '';
    rows.set(e.index, {
      file: e.file,
      prompt: String(e.prompt ?? ''),
      negative: typeof e.negative_prompt === 'string' ? e.negative_prompt : '',
      seed: String(e.seed ?? ''),
      width: Number(e.width),
      height: Number(e.height),
      model,
      ...(typeof e.shard === 'string' ? { shard: e.shard } : {}),
    });
  }
  return new Map([...rows.entries()].sort((a, b) => a[0] - b[0]));
}

/** A thumbnail's name: the image's file name + .webp (a.png and a.jpg stay apart), after its shard's for a tar member. */
export function thumbnailName(file: string, shard?: string): string {
  return shard ? `${shard}_${file}.webp` : `${file}.webp`;
}

async function mtimeOrUndefined(p: string): Promise<number | undefined> {
  try {
    return (await stat(p)).mtimeMs;
  } catch {
    return undefined;
  }
}

async function makeThumbnail(image: string | Buffer, thumb: string, size: number): Promise<void> {
  // A cache, so no fsync; the rename still keeps a killed build from leaving a torn thumbnail under the final name.
  const temp = tempPathFor(thumb);
  await sharp(image).resize(size, size, { fit: 'inside', withoutEnlargement: true }).webp({ quality: 80 }).toFile(temp);
  await rename(temp, thumb);
}

export async function buildGallery(opts: GalleryOptions): Promise<GallerySummary> {
  const started = performance.now();
  const { dir } = opts;
  const size = opts.thumbSize ?? DEFAULT_THUMB_SIZE;
  const pageSize = opts.pageSize ?? DEFAULT_PAGE_SIZE;
  const rows = await readRuns(dir);
  const present = new Set(await readdir(dir));
  const thumbs = path.join(dir, GALLERY_DIR, THUMBS_DIR);
  await mkdir(thumbs, { recursive: true });
  await removeStaleTemps(thumbs);

  // The members of the shards the manifest names (headers only).
  const members = new Map<string, Map<string, TarEntry>>();
  for (const r of rows.values()) {
    if (r.shard === undefined || members.has(r.shard) || !present.has(r.shard)) continue;
    members.set(r.shard, new Map((await listTar(path.join(dir, r.shard))).map((m) => [m.name, m])));
  }
  const cards: Card[] = [];
  let leftOut = 0;
  for (const [index, r] of rows) {
    const there = r.shard === undefined ? present.has(r.file) : members.get(r.shard)?.has(r.file);
    if (!there) {
      leftOut++;
      continue;
    }
    cards.push([r.file, thumbnailName(r.file, r.shard), r.prompt, r.negative, r.seed, r.width, r.height, r.model, index, r.shard ?? '']);
  }

  let made = 0;
  let kept = 0;
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < cards.length) {
      const card = cards[next++];
      const [file, thumbName, , , , , , , , shard] = card;
      const image = path.join(dir, shard || file);
      const thumb = path.join(thumbs, thumbName);
      const [imageTime, thumbTime] = await Promise.all([mtimeOrUndefined(image), mtimeOrUndefined(thumb)]);
      if (thumbTime !== undefined && imageTime !== undefined && thumbTime >= imageTime) kept++;
      else {
        try {
          await makeThumbnail(shard ? await readMember(image, members.get(shard)!.get(file)!) : image, thumb, size);
        } catch (err) {
          throw new BadInputError(image, `cannot be read as an image (${(err as Error).message}).`, 'Regenerate it (generate --resume redoes a prompt whose file is gone), or delete it.');
        }
        made++;
      }
      opts.onProgress?.(made + kept, cards.length);
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, opts.concurrency ?? 4) }, worker));

  const scripts: string[] = [];
  for (let c = 0; c * CHUNK < cards.length || c === 0; c++) {
    const name = `data-${String(c).padStart(5, '0')}.js`;
    const chunk = cards.slice(c * CHUNK, (c + 1) * CHUNK);
    await writeFileAtomic(path.join(dir, GALLERY_DIR, name), `onestepGallery.push(${JSON.stringify(chunk)});\n`);
    scripts.push(`${GALLERY_DIR}/${name}`);
  }
  // Data scripts of a bigger earlier build.
  for (const name of await readdir(path.join(dir, GALLERY_DIR))) {
    if (/^data-\d{5}\.js$/.test(name) && !scripts.includes(`${GALLERY_DIR}/${name}`)) await rm(path.join(dir, GALLERY_DIR, name), { force: true });
  }
  const index = path.join(dir, GALLERY_INDEX);
  await writeFileAtomic(index, galleryHtml({ title: path.basename(path.resolve(dir)), scripts, pageSize, thumbSize: size }));
  return {
    index,
    images: cards.length,
    thumbnails_made: made,
    thumbnails_kept: kept,
    left_out: leftOut,
    seconds: Math.round((performance.now() - started) / 10) / 100,
  };
}

async function readMember(tar: string, entry: TarEntry): Promise<Buffer> {
  const handle = await open(tar, 'r');
  try {
    const buf = Buffer.alloc(entry.size);
    const { bytesRead } = await handle.read(buf, 0, entry.size, entry.offset);
    if (bytesRead !== entry.size) throw new Error(`${entry.name} is cut short`);
    return buf;
  } finally {
    await handle.close();
  }
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** The page: self-contained HTML, CSS and script; the cards come from the data scripts. */
export function galleryHtml(p: { title: string; scripts: string[]; pageSize: number; thumbSize: number }): string {
  const box = Math.min(p.thumbSize, 192);
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="onestep gallery">
<title>${escapeHtml(p.title)} - onestep gallery</title>
<style>
  body { margin: 0; font: 13px/1.35 system-ui, sans-serif; background: #f2f2f2; color: #222; }
  header { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ccc; padding: 8px 12px; display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
  header h1 { font-size: 15px; margin: 0; }
  #q { width: 24em; padding: 4px 6px; font: inherit; }
  #count { color: #555; }
  nav button { font: inherit; }
  #cards { display: grid; grid-template-columns: repeat(auto-fill, ${box + 24}px); gap: 10px; padding: 12px; }
  .card { background: #fff; border: 1px solid #ccc; padding: 8px; box-sizing: border-box; }
  .card a.image { display: flex; width: ${box}px; height: ${box}px; align-items: center; justify-content: center; background: #e4e4e4; }
  .card img { max-width: ${box}px; max-height: ${box}px; }
  .card img.small { width: ${box}px; height: ${box}px; object-fit: contain; image-rendering: pixelated; }
  .prompt { margin-top: 6px; word-wrap: break-word; max-height: 8em; overflow: auto; }
  .negative { color: #666; word-wrap: break-word; }
  .meta { margin-top: 4px; color: #555; font-size: 12px; }
  #empty { padding: 24px; color: #555; }
</style>
</head>
<body>
<header>
  <h1>${escapeHtml(p.title)}</h1>
  <input id="q" type="search" placeholder="filter: words of the prompt, seed, file, model" aria-label="filter">
  <span id="count"></span>
  <nav><button id="prev" type="button">&larr; previous</button> <span id="page"></span> <button id="next" type="button">next &rarr;</button></nav>
</header>
<main id="cards"></main>
<div id="empty" hidden>No image matches.</div>
<script>var onestepGallery = [];</script>
${p.scripts.map((s) => `<script src="${escapeHtml(s)}"></script>`).join('\n')}
<script>
(function () {
  var PAGE = ${p.pageSize}, BOX = ${box}, THUMBS = '${GALLERY_DIR}/${THUMBS_DIR}/';
  var all = [].concat.apply([], onestepGallery);
  var haystack = all.map(function (c) { return [c[0], c[2], c[3], c[4], c[5] + 'x' + c[6], c[7], c[9]].join('\\n').toLowerCase(); });
  var shown = all, page = 0;
  var q = document.getElementById('q'), cards = document.getElementById('cards');
  function readHash() {
    var params = new URLSearchParams(location.hash.slice(1));
    q.value = params.get('q') || '';
    page = Math.max(0, (parseInt(params.get('page') || '1', 10) || 1) - 1);
  }
  function writeHash() {
    var params = new URLSearchParams();
    if (q.value) params.set('q', q.value);
    if (page) params.set('page', String(page + 1));
    history.replaceState(null, '', '#' + params.toString());
  }
  function filter() {
    var words = q.value.toLowerCase().split(/\\s+/).filter(Boolean);
    shown = [];
    for (var i = 0; i < all.length; i++) {
      var h = haystack[i], ok = true;
      for (var w = 0; w < words.length && ok; w++) ok = h.indexOf(words[w]) >= 0;
      if (ok) shown.push(all[i]);
    }
  }
  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }
  function render() {
    var pages = Math.max(1, Math.ceil(shown.length / PAGE));
    page = Math.min(page, pages - 1);
    cards.textContent = '';
    var frag = document.createDocumentFragment();
    shown.slice(page * PAGE, (page + 1) * PAGE).forEach(function (c) {
      var card = el('article', 'card');
      card.dataset.index = c[8];
      var a = el('a', 'image');
      a.href = encodeURIComponent(c[9] || c[0]);
      a.title = c[9] ? c[0] + ' in ' + c[9] : c[0];
      var img = el('img');
      img.src = THUMBS + encodeURIComponent(c[1]);
      img.alt = c[2];
      if (c[5] < BOX && c[6] < BOX) img.className = 'small';
      a.appendChild(img);
      card.appendChild(a);
      card.appendChild(el('div', 'prompt', c[2]));
      if (c[3]) card.appendChild(el('div', 'negative', 'negative: ' + c[3]));
      card.appendChild(el('div', 'meta', 'seed ' + c[4] + ' \\u00b7 ' + c[5] + '\\u00d7' + c[6] + ' \\u00b7 ' + c[7] + (c[9] ? ' \\u00b7 ' + c[9] : '')));
      frag.appendChild(card);
    });
    cards.appendChild(frag);
    document.getElementById('empty').hidden = shown.length > 0;
    document.getElementById('count').textContent = (shown.length === all.length ? all.length + ' images' : shown.length + ' of ' + all.length + ' images');
    document.getElementById('page').textContent = 'page ' + (page + 1) + ' of ' + pages;
    document.getElementById('prev').disabled = page === 0;
    document.getElementById('next').disabled = page >= pages - 1;
  }
  var timer;
  q.addEventListener('input', function () {
    clearTimeout(timer);
    timer = setTimeout(function () { page = 0; filter(); render(); writeHash(); }, 150);
  });
  document.getElementById('prev').addEventListener('click', function () { page--; render(); writeHash(); scrollTo(0, 0); });
  document.getElementById('next').addEventListener('click', function () { page++; render(); writeHash(); scrollTo(0, 0); });
  addEventListener('hashchange', function () { readHash(); filter(); render(); });
  readHash();
  filter();
  render();
})();
</script>
</body>
</html>
`;
}
