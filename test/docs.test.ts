/**
 * The user documentation must agree with the code: every recipe's page states exactly the values in RECIPES, the
 * name-detection examples detect what the table says, every `onestep <command> --flag` written in docs/ or README.md
 * names a flag (and option value) the command has, and relative links resolve.
 */
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { detectRecipe, RECIPES } from '../src/runtime/recipes.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const DOCS = join(ROOT, 'docs');
const MODELS_INDEX = join(DOCS, 'models.md');
const MODEL_PAGES = join(DOCS, 'models');

function walk(dir: string, keep: (file: string) => boolean): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) => {
    const p = join(dir, e.name);
    return e.isDirectory() ? walk(p, keep) : keep(p) ? [p] : [];
  });
}

const MARKDOWN_FILES = [...walk(DOCS, (f) => f.endsWith('.md')), join(ROOT, 'README.md')];

/** Markdown with fenced code blocks blanked out (line count kept), for prose-only scans. */
function withoutFences(md: string): string {
  let inFence = false;
  return md
    .split('\n')
    .map((line) => {
      if (/^\s*```/.test(line)) {
        inFence = !inFence;
        return '';
      }
      return inFence ? '' : line;
    })
    .join('\n');
}

/** The rows of the first table after a `## <heading>` line, as trimmed cells, header first (separator dropped). */
function tableAfter(md: string, heading: string): string[][] {
  const lines = md.split('\n');
  const start = lines.findIndex((l) => l.trim() === `## ${heading}`);
  assert.ok(start >= 0, `no "## ${heading}" section`);
  let i = start + 1;
  while (i < lines.length && !lines[i].trimStart().startsWith('|')) {
    assert.ok(!lines[i].startsWith('## '), `"## ${heading}" has no table`);
    i++;
  }
  const rows: string[][] = [];
  for (; i < lines.length && lines[i].trimStart().startsWith('|'); i++) {
    const cells = lines[i].trim().slice(1, -1).split('|').map((c) => c.trim());
    if (cells.every((c) => /^:?-+:?$/.test(c))) continue;
    rows.push(cells);
  }
  assert.ok(rows.length >= 2, `"## ${heading}" table has no rows`);
  return rows;
}

/** Table rows as objects keyed by the header cells. */
function records(rows: string[][]): Record<string, string>[] {
  const [header, ...body] = rows;
  return body.map((cells) => {
    assert.equal(cells.length, header.length, `row "${cells.join(' | ')}" has ${cells.length} cells, header ${header.length}`);
    return Object.fromEntries(header.map((h, k) => [h, cells[k]]));
  });
}

const unquote = (s: string) => s.replace(/`/g, '').trim();
const yesNo = (s: string, where: string): boolean => {
  const v = unquote(s);
  assert.ok(v === 'yes' || v === 'no', `${where}: informative prior must be "yes" or "no", got "${s}"`);
  return v === 'yes';
};
const exactNumber = (s: string, where: string): number => {
  const v = unquote(s);
  assert.match(v, /^\d+(\.\d+)?$/, `${where}: "${s}" is not a plain number`);
  return Number(v);
};

describe('docs: one-step recipes', () => {
  const SETTINGS = ['prediction', 'timestep', 'guidance', 'informative prior', 'base families'];

  for (const [name, recipe] of Object.entries(RECIPES)) {
    it(`docs/models/${name}.md states exactly the ${name} recipe`, () => {
      const file = join(MODEL_PAGES, `${name}.md`);
      assert.ok(existsSync(file), `recipe ${name} has no page ${relative(ROOT, file)}`);
      const rows = records(tableAfter(readFileSync(file, 'utf8'), 'Recipe'));
      const table = new Map(rows.map((r) => [r.setting, r.value]));
      assert.deepEqual([...table.keys()], SETTINGS, `${name}.md: the recipe table's settings`);
      for (const r of rows) assert.ok(r.source && r.source.length > 3, `${name}.md: "${r.setting}" names no source`);
      const where = `${name}.md`;
      assert.equal(unquote(table.get('prediction')!), recipe.prediction_type, `${where}: prediction`);
      assert.equal(exactNumber(table.get('timestep')!, where), recipe.timestep, `${where}: timestep`);
      assert.equal(exactNumber(table.get('guidance')!, where), recipe.guidance, `${where}: guidance`);
      assert.equal(yesNo(table.get('informative prior')!, where), recipe.informative_prior, `${where}: informative prior`);
      const families = table.get('base families')!.split(',').map(unquote);
      assert.deepEqual([...families].sort(), [...recipe.families].sort(), `${where}: base families`);
    });
  }

  it('every page under docs/models is a recipe page', () => {
    const pages = readdirSync(MODEL_PAGES).filter((f) => f.endsWith('.md')).map((f) => f.slice(0, -3));
    assert.deepEqual(pages.sort(), Object.keys(RECIPES).sort());
  });

  it('docs/models.md lists every recipe once, with its values and a link to its page', () => {
    const rows = records(tableAfter(readFileSync(MODELS_INDEX, 'utf8'), 'Families'));
    const seen = new Set<string>();
    for (const row of rows) {
      const link = /^\[([a-z0-9-]+)\]\(models\/([a-z0-9-]+)\.md\)$/.exec(row.recipe);
      assert.ok(link && link[1] === link[2], `models.md: recipe cell "${row.recipe}" must link to models/<recipe>.md`);
      const name = link[1];
      const recipe = RECIPES[name];
      assert.ok(recipe, `models.md lists unknown recipe ${name}`);
      assert.ok(!seen.has(name), `models.md lists ${name} twice`);
      seen.add(name);
      const where = `models.md row ${name}`;
      assert.equal(unquote(row.prediction), recipe.prediction_type, `${where}: prediction`);
      assert.equal(exactNumber(row.timestep, where), recipe.timestep, `${where}: timestep`);
      assert.equal(exactNumber(row.guidance, where), recipe.guidance, `${where}: guidance`);
      assert.equal(yesNo(row['informative prior'], where), recipe.informative_prior, `${where}: informative prior`);
    }
    assert.deepEqual([...seen].sort(), Object.keys(RECIPES).sort());
  });

  it('the detection-by-name examples in docs/models.md detect the recipe the table names', () => {
    const rows = records(tableAfter(readFileSync(MODELS_INDEX, 'utf8'), 'Detection by name'));
    for (const row of rows) {
      const example = unquote(row['example name']);
      const expected = row.recipe === 'default' ? undefined : row.recipe;
      assert.equal(detectRecipe([example])?.name, expected, `"${example}" should detect ${row.recipe}`);
    }
    const covered = new Set(rows.map((r) => r.recipe));
    for (const name of Object.keys(RECIPES)) assert.ok(covered.has(name), `the detection table has no rule for ${name}`);
  });
});

interface FlagSpec {
  char?: string;
  type?: string;
  options?: readonly string[];
}

/** Command ids ("convert", "lora merge") and their static flags, read from src/commands. */
async function loadCommands(): Promise<Map<string, Record<string, FlagSpec>>> {
  const dir = join(ROOT, 'src', 'commands');
  const commands = new Map<string, Record<string, FlagSpec>>();
  for (const file of walk(dir, (f) => f.endsWith('.ts'))) {
    const id = relative(dir, file).slice(0, -3).split(/[\\/]/).join(' ');
    const mod = (await import(pathToFileURL(file).href)) as { default?: { flags?: Record<string, FlagSpec> } };
    assert.ok(mod.default, `${relative(ROOT, file)} has no default export`);
    commands.set(id, mod.default.flags ?? {});
  }
  return commands;
}

/** Code written in a markdown file: fenced blocks (with `\` continuations joined, `#` comments dropped) and inline spans. */
function codeSnippets(md: string): string[] {
  const snippets: string[] = [];
  let fence: string[] | undefined;
  for (const line of md.split('\n')) {
    if (/^\s*```/.test(line)) {
      if (fence) {
        snippets.push(...fence.join('\n').replace(/\\\n/g, ' ').split('\n'));
        fence = undefined;
      } else fence = [];
      continue;
    }
    if (fence) fence.push(line.replace(/(^|\s)#.*$/, ''));
  }
  for (const m of withoutFences(md).matchAll(/`([^`]+)`/g)) snippets.push(m[1].replace(/\s+/g, ' '));
  return snippets;
}

interface CommandUse {
  id: string;
  args: string[];
  text: string;
}

/** Each `onestep <command> ...` (or `bin/run.js <command> ...`) in a snippet, up to a pipe or command separator. */
function commandUses(snippet: string, ids: Set<string>): CommandUse[] {
  const uses: CommandUse[] = [];
  for (const segment of snippet.split(/\|\||&&|[|;]/)) {
    const tokens = segment.trim().split(/\s+/);
    const at = tokens.findIndex((t) => t === 'onestep' || t.endsWith('bin/run.js'));
    if (at < 0 || at + 1 >= tokens.length) continue;
    const two = `${tokens[at + 1]} ${tokens[at + 2] ?? ''}`;
    const id = ids.has(two) ? two : tokens[at + 1];
    if (!ids.has(id)) {
      assert.ok(!/^[a-z][a-z-]*$/.test(id), `unknown command "onestep ${id}" in: ${segment.trim()}`);
      continue;
    }
    uses.push({ id, args: tokens.slice(at + 1 + id.split(' ').length), text: segment.trim() });
  }
  return uses;
}

const bare = (token: string) => token.replace(/^[[("'`]+|[\])"'`,]+$/g, '');

describe('docs: commands and flags', () => {
  it('every onestep <command> --flag in docs/ and README.md exists, with valid option values', async () => {
    const commands = await loadCommands();
    assert.ok(commands.has('convert') && commands.has('generate'), 'src/commands lacks convert or generate');
    const ids = new Set(commands.keys());
    let checked = 0;
    for (const file of MARKDOWN_FILES) {
      for (const snippet of codeSnippets(readFileSync(file, 'utf8'))) {
        for (const use of commandUses(snippet, ids)) {
          const flags = commands.get(use.id)!;
          const where = `${relative(ROOT, file)}: "${use.text}"`;
          for (let i = 0; i < use.args.length; i++) {
            const token = bare(use.args[i]);
            const long = /^--([a-z][a-z0-9-]*)(?:=(.*))?$/.exec(token);
            const short = /^-([a-zA-Z])$/.exec(token);
            if (short) {
              assert.ok(Object.values(flags).some((f) => f.char === short[1]), `${where}: onestep ${use.id} has no -${short[1]}`);
              checked++;
              continue;
            }
            if (!long) continue;
            const [, name, inline] = long;
            if (name === 'help') continue;
            const spec = flags[name];
            assert.ok(spec, `${where}: onestep ${use.id} has no --${name} (flags: ${Object.keys(flags).join(', ')})`);
            checked++;
            if (spec.type === 'boolean' || !spec.options) continue;
            const value = inline ?? (use.args[i + 1] === undefined ? undefined : bare(use.args[i + 1]));
            if (value === undefined || !/^[A-Za-z0-9_.:-]+$/.test(value) || value.startsWith('-')) continue;
            assert.ok(spec.options.includes(value), `${where}: --${name} ${value} is not one of ${spec.options.join(', ')}`);
          }
        }
      }
    }
    assert.ok(checked > 20, `only ${checked} flags found: the scan is broken`);
  });
});

/** GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens. */
function anchors(md: string): Set<string> {
  const set = new Set<string>();
  for (const m of withoutFences(md).matchAll(/^#{1,6}\s+(.+)$/gm)) {
    set.add(m[1].trim().toLowerCase().replace(/[^\p{L}\p{N}\s-]/gu, '').replace(/\s/g, '-'));
  }
  return set;
}

describe('docs: links', () => {
  it('relative links in docs/ and README.md resolve to files (and headings)', () => {
    let checked = 0;
    for (const file of MARKDOWN_FILES) {
      const md = readFileSync(file, 'utf8');
      const prose = withoutFences(md).replace(/`[^`]*`/g, '');
      for (const m of prose.matchAll(/\[[^\]]*\]\(([^)\s]+)\)/g)) {
        const target = m[1];
        if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue;
        const [path, anchor] = target.split('#');
        const dest = path === '' ? file : resolve(dirname(file), decodeURIComponent(path));
        const where = `${relative(ROOT, file)}: link ${target}`;
        assert.ok(existsSync(dest), `${where} points to a missing file`);
        if (anchor) {
          assert.ok(statSync(dest).isFile() && dest.endsWith('.md'), `${where}: an anchor needs a markdown file`);
          assert.ok(anchors(readFileSync(dest, 'utf8')).has(anchor), `${where}: no heading #${anchor}`);
        }
        checked++;
      }
    }
    assert.ok(checked >= 20, `only ${checked} links found: the scan is broken`);
  });

  it('docs/models.md links every model page, and every model page links back', () => {
    const index = readFileSync(MODELS_INDEX, 'utf8');
    for (const f of readdirSync(MODEL_PAGES).filter((n) => n.endsWith('.md'))) {
      assert.ok(index.includes(`](models/${f})`), `docs/models.md does not link models/${f}`);
      assert.ok(readFileSync(join(MODEL_PAGES, f), 'utf8').includes('](../models.md)'), `models/${f} does not link back`);
    }
  });
});
