/**
 * `npm run bench [-- <names...>] [-- --model <dir>]`: runs the benchmarks and prints figures; never fails on them.
 * Names: safetensors, convert, sdxl, pixart, lora, generate, gallery, model (`onestep bench`'s figures), writer, quantize (int8 / fp16 layers against float32) (default: all). Big files go to bench/.work/ (git-ignored).
 */
export {};

const argv = process.argv.slice(2);
const modelAt = argv.indexOf('--model');
const modelDir = modelAt >= 0 ? argv[modelAt + 1] : undefined;
const names = argv.filter((a, i) => !a.startsWith('--') && (modelAt < 0 || i !== modelAt + 1));
const all = ['safetensors', 'convert', 'sdxl', 'pixart', 'lora', 'generate', 'gallery', 'model', 'writer', 'quantize'];
const selected = names.length ? names : all;
for (const name of selected) if (!all.includes(name)) throw new Error(`unknown benchmark "${name}" (known: ${all.join(', ')})`);

for (const name of selected) {
  console.log(`\n== ${name} ==`);
  const started = performance.now();
  if (name === 'safetensors') await (await import('./safetensors.js')).benchSafetensors({ sizeGB: Number(process.env.ONESTEP_BENCH_GB ?? 5) });
  if (name === 'convert') await (await import('./convert.js')).benchConvert({});
  if (name === 'sdxl') await (await import('./sdxl.js')).benchSdxl({ dir: process.env.ONESTEP_BENCH_SDXL_DIR });
  if (name === 'pixart') await (await import('./pixart.js')).benchPixArt({ dir: process.env.ONESTEP_BENCH_PIXART_DIR });
  if (name === 'lora') await (await import('./lora.js')).benchLoraMerge({});
  if (name === 'generate') await (await import('./generate.js')).benchGenerate({ modelDir });
  if (name === 'gallery') await (await import('./gallery.js')).benchGallery({});
  if (name === 'model') await (await import('./model.js')).benchModel({ modelDir });
  if (name === 'writer') await (await import('./writer.js')).benchWriter({});
  if (name === 'quantize') {
    const q = await import('./quantize.js');
    await q.benchQuantize({ quick: argv.includes('--quick') });
    if (argv.includes('--full')) await q.benchQuantizedModel({ dir: process.env.ONESTEP_BENCH_DIR });
  }
  console.log(`(${name}: ${((performance.now() - started) / 1000).toFixed(0)} s)`);
}
