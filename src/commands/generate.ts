import { parseSeed } from '../io/prompts.js';
import { precision, sharedFlags } from '../cli/flags.js';
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { Readable } from 'node:stream';
import { Args, Flags } from '@oclif/core';
import { OnestepCommand } from '../cli/base-command.js';
import { Progress } from '../cli/progress.js';
import { OnestepError } from '../errors.js';
import { checkImageSize, generateImages } from '../generate.js';
import { parseDevice } from '../runtime/device.js';
import { BadInputError } from '../errors.js';
import { IMAGE_FORMATS, type ImageFormat } from '../io/images.js';
import { OUTPUT_FORMATS } from '../io/outputs.js';
import { requireWritableFolder } from '../io/files.js';
import { DEFAULT_NAME_TEMPLATE, NameTemplate } from '../io/names.js';
import { checkPromptFile, countPrompts } from '../io/prompts.js';
import { resolveShard } from '../io/shard.js';
import { findModelDir, resolveModel } from '../models.js';
import { formatPlan, planRun } from '../plan.js';
import { seededRandomSeed } from '../runtime/noise.js';

/** The prompt file (or `-`), or the -p prompts as a JSONL stream (so a prompt starting with # or { is just text). */
function promptSource(file: string | undefined, prompts: string[] | undefined): string | Readable {
  if (file !== undefined && prompts?.length) {
    throw new OnestepError('Prompts come from a file or from -p/--prompt, not both.', 'Put the -p prompts in the file, or leave out the file.');
  }
  if (prompts?.length) return Readable.from(prompts.map((prompt) => JSON.stringify({ prompt }) + '\n'));
  if (file === undefined) {
    throw new OnestepError('No prompts given.', 'Pass a prompt file (.txt or .jsonl, - for stdin) or one or more -p "a prompt".');
  }
  return file;
}

/** The model directory's default image size, read from its model.json (no model is loaded). */
function readDefaultSize(dir: string): { width: number; height: number } | undefined {
  try {
    const size = JSON.parse(readFileSync(path.join(dir, 'model.json'), 'utf8')).default_size;
    return Number.isInteger(size?.width) && Number.isInteger(size?.height) ? { width: size.width, height: size.height } : undefined;
  } catch {
    return undefined;
  }
}

function readNegativePrompt(file: string): string {
  try {
    return readFileSync(file, 'utf8').replace(/[\r\n]+$/, '');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new BadInputError(file, code === 'ENOENT' ? 'no such negative prompt file.' : `cannot be read (${code ?? String(err)}).`);
  }
}

export default class Generate extends OnestepCommand {
  static description = `Stream prompts through a one-step model and write images.

Prompts come from a text file (one per line; blank lines and lines starting with # are skipped), a JSONL file (keys \
prompt, negative_prompt, seed, width, height, guidance, name) or - for stdin. Prompt i (counted from 0) gets seed \
base + i unless its line gives one, so the same prompt and seed give the same image at any batch size or shard split. \
Prompts can also be given with -p (repeatable) instead of a file. With --images-per-prompt n, image j of prompt i \
gets index i*n + j and seed base + i*n + j (a line's own seed s gives s + j).`;
  static examples = [
    '<%= config.bin %> generate examples/prompts.txt',
    '<%= config.bin %> generate prompts.jsonl --model models/sd-turbo -o out --batch-size 4 --seed 42',
    'cat prompts.txt | <%= config.bin %> generate - --model sd-turbo.safetensors --format webp',
    '<%= config.bin %> generate -p "a photo of a cat" -p "a lighthouse at dusk" --images-per-prompt 4 --grid',
    '<%= config.bin %> generate prompts.txt --output-format webdataset --shard-size 1000 --format webp --resume',
    '<%= config.bin %> generate prompts.jsonl --images-per-prompt 2 --shard 0/4 --dry-run',
  ];
  static args = { prompts: Args.string({ description: 'prompt file (.txt or .jsonl) or - for stdin (or use -p)', required: false }) };
  static flags = {
    prompt: Flags.string({ char: 'p', description: 'a prompt (repeatable), instead of a prompt file', multiple: true }),
    'images-per-prompt': Flags.integer({ char: 'n', description: 'images per prompt: image j of prompt i gets seed base + i*n + j', default: 1, min: 1 }),
    model: Flags.string({ char: 'm', description: 'model directory, or a checkpoint to convert on first use (default: $ONESTEP_MODEL, else the bundled demo model)' }),
    lora: sharedFlags.lora('LoRA file[:scale] merged when converting a checkpoint (repeatable)'),
    out: Flags.string({ char: 'o', description: 'output folder', default: './outputs' }),
    'batch-size': Flags.integer({ char: 'b', description: 'prompts per tensor batch (different prompts share a batch)', default: 1, min: 1 }),
    seed: Flags.string({ description: 'base seed: prompt i gets seed + i (random and recorded when unset)' }),
    rng: Flags.string({ description: 'noise generator: torch reproduces torch.randn with a CPU generator per image', options: ['torch'], default: 'torch' }),
    device: Flags.string({ description: 'auto | cpu | cuda | cuda:N (auto: CUDA when its provider loads, else CPU)', default: 'auto' }),
    workers: Flags.integer({ description: 'inference worker threads (one ONNX Runtime session set each)', min: 1 }),
    threads: Flags.integer({ description: 'intra-op threads per worker (default: cores / workers)', min: 1 }),
    width: Flags.integer({ description: 'image width (multiple of 8; default: the model\'s)' }),
    height: Flags.integer({ description: 'image height (multiple of 8; default: the model\'s)' }),
    guidance: Flags.string({ description: 'classifier-free guidance scale (> 1 runs a negative pass; default: the model recipe\'s)' }),
    'negative-prompt': Flags.string({ description: 'negative prompt for guidance > 1 (default empty)', exclusive: ['negative-prompt-file'] }),
    'negative-prompt-file': Flags.string({ description: 'a text file whose content is the negative prompt (trailing newlines dropped)' }),
    prediction: sharedFlags.prediction('override what the model predicts'),
    timestep: Flags.string({ description: 'override the one-step timestep (may be fractional, e.g. 1000.0)' }),
    latents: Flags.string({ description: 'safetensors with one float32 tensor [N, C, H/8, W/8]: row i is the initial noise of prompt i' }),
    'init-image': Flags.string({ description: 'image-to-image: an init image for every prompt, or a folder of them (prompt i takes the i-th file by name); JSONL lines may give their own "image"' }),
    strength: Flags.custom<number>({
      description: 'image-to-image strength in (0, 1]: one step at the timestep diffusers uses for it (0.5 -> t=499); JSONL "strength" per line',
      parse: async (input) => {
        const v = Number(input);
        if (!(v > 0 && v <= 1)) throw new Error(`--strength must be a number above 0 and at most 1, got ${input}`);
        return v;
      },
    })(),
    'init-latent-mean': Flags.string({ description: 'safetensors with a mean latent: YOSO informative prior z = sqrt(a) mean + sqrt(1-a) noise' }),
    format: Flags.option({ description: 'image format', options: IMAGE_FORMATS, default: 'png' as ImageFormat })(),
    'output-format': Flags.option({
      description: 'files: image files + metadata.jsonl (a Hugging Face imagefolder); webdataset: tar shards 00000.tar, ...',
      options: OUTPUT_FORMATS,
      default: 'files' as const,
    })(),
    grid: Flags.boolean({ description: 'also write an A1111-style grid PNG per batch into <out>/.grids/ (hidden: the folder stays an imagefolder)' }),
    'shard-size': Flags.integer({ description: 'images per webdataset tar shard (default 1000)', min: 1 }),
    quality: Flags.integer({ description: 'webp/jpeg quality 1-100', min: 1, max: 100 }),
    name: Flags.string({ description: 'file name template: {index:06} {seed} {prompt:40} {name} {width} {height}', default: DEFAULT_NAME_TEMPLATE }),
    resume: Flags.boolean({ description: 'skip prompts the output folder\'s manifest.jsonl already holds (with their file)' }),
    strict: Flags.boolean({ description: 'a bad prompt line is fatal instead of reported and skipped' }),
    shard: Flags.string({ description: 'i/N: take the prompts with index % N == i (default: from SLURM_ARRAY_TASK_ID/COUNT or JOB_COMPLETION_INDEX)' }),
    'shard-count': Flags.integer({ description: 'shard count to pair with JOB_COMPLETION_INDEX (or ONESTEP_SHARD_COUNT)', min: 1 }),
    dtype: sharedFlags.precision('precision when a checkpoint is converted on the fly', 'fp32'),
    quiet: sharedFlags.quiet,
    json: Flags.boolean({ description: 'print the final summary (or the --dry-run plan) as JSON on stdout' }),
    'dry-run': Flags.boolean({ description: 'print what would be generated (counts, sizes, seeds, shard, first images) without loading a model' }),
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Generate);
    if (flags['shard-size'] !== undefined && flags['output-format'] !== 'webdataset') {
      throw new OnestepError('--shard-size is for --output-format webdataset.', 'Add --output-format webdataset, or leave out --shard-size.');
    }
    const source = promptSource(args.prompts, flags.prompt);
    const negativePrompt = flags['negative-prompt-file'] !== undefined ? readNegativePrompt(flags['negative-prompt-file']) : flags['negative-prompt'];
    const progress = new Progress(flags.quiet);
    const warn = (m: string) => (flags.quiet ? undefined : progress.note(`warning: ${m}`));
    const guidance = flags.guidance === undefined ? undefined : Number(flags.guidance);
    if (guidance !== undefined && !Number.isFinite(guidance)) throw new OnestepError(`--guidance must be a number, got "${flags.guidance}"`);
    const timestep = flags.timestep === undefined ? undefined : Number(flags.timestep);
    if (timestep !== undefined && !(timestep >= 0 && timestep <= 1000)) throw new OnestepError(`--timestep must be within 0..1000, got "${flags.timestep}"`);
    const loras = flags.lora ?? [];
    const shard = resolveShard(flags.shard, process.env, flags['shard-count']);
    const seed = flags.seed === undefined ? seededRandomSeed() : parseSeed(flags.seed, '--seed');
    // Flag mistakes are reported before a model is loaded or converted (which can take a minute).
    checkImageSize(flags.width, flags.height);
    parseDevice(flags.device);
    if (guidance !== undefined && guidance < 0) throw new OnestepError(`--guidance must be >= 0 (the JSONL lines' rule), got ${flags.guidance}`);
    if (typeof source === 'string' && source !== '-') checkPromptFile(source);
    new NameTemplate(flags.name);
    if (!flags['dry-run']) requireWritableFolder(flags.out);

    if (flags['dry-run']) {
      const found = await findModelDir({ model: flags.model, loras, dtype: precision(flags.dtype) });
      for (const n of found.notes) if (!flags.quiet) progress.note(n);
      const plan = await planRun(source === '-' ? process.stdin : source, {
        seed,
        shard,
        imagesPerPrompt: flags['images-per-prompt'],
        width: flags.width,
        height: flags.height,
        defaultSize: found.dir ? readDefaultSize(found.dir) : undefined,
        outputFormat: flags['output-format'],
        shardSize: flags['shard-size'] ?? 1000,
        out: flags.out,
        resume: flags.resume,
        strict: flags.strict,
        nameTemplate: flags.name,
        format: flags.format,
        initImage: flags['init-image'],
        promptFile: typeof source === 'string' ? source : undefined,
        onIssue: (line, message) => warn(`${args.prompts ?? '--prompt'}:${line}: ${message} (skipped)`),
      });
      if (flags.seed === undefined && !flags.quiet) progress.note(`seed: ${seed} (random; pass --seed ${seed} to get these seeds)`);
      this.log(flags.json ? JSON.stringify(plan) : formatPlan(plan));
      return;
    }

    const resolved = await resolveModel({
      model: flags.model,
      loras,
      dtype: precision(flags.dtype),
      onConvertProgress: (p) => progress.update(`converting: ${p.component} ${p.tensors}/${p.totalTensors} tensors`),
    });
    for (const n of resolved.notes) if (!flags.quiet) progress.note(n);
    if (flags.seed === undefined && !flags.quiet) progress.note(`seed: ${seed} (random; pass --seed ${seed} to reproduce)`);

    // The total is only for progress: counted alongside the run, and only for a regular file (counting a named pipe or
    // process substitution would consume the prompts, and waiting for a count would delay the first image).
    let total: number | undefined;
    const perPrompt = flags['images-per-prompt'];
    if (flags.prompt) total = flags.prompt.length * perPrompt;
    else if (typeof source === 'string' && source !== '-' && statSync(source, { throwIfNoEntry: false })?.isFile()) {
      countPrompts(source, { shard }).then((n) => (total = n * perPrompt), () => undefined);
    }
    const controller = new AbortController();
    let interrupts = 0;
    const onSigint = (signal: NodeJS.Signals) => {
      interrupts++;
      if (interrupts > 1) {
        // Quit now. process.exit would tear down ONNX Runtime's worker threads mid-run (SIGABRT, "Napi::Error"): the
        // exit hooks run here instead (partial files, the folder's lock; the manifest is whole line by line), then the
        // process ends by the signal itself (status 130 for SIGINT), which runs no teardown.
        process.emit('exit', 128 + (signal === 'SIGTERM' ? 15 : 2));
        process.removeAllListeners('SIGINT');
        process.removeAllListeners('SIGTERM');
        process.kill(process.pid, signal);
        return;
      }
      progress.note('interrupted: finishing the batches in flight and flushing the manifest (Ctrl-C again to quit now)');
      controller.abort();
    };
    process.on('SIGINT', onSigint);
    process.on('SIGTERM', onSigint);
    let started = Date.now();
    let skipped = 0;
    try {
      const summary = await generateImages(source === '-' ? process.stdin : source, {
        modelDir: resolved.dir,
        out: flags.out,
        batchSize: flags['batch-size'],
        seed,
        device: flags.device,
        workers: flags.workers,
        threads: flags.threads,
        width: flags.width,
        height: flags.height,
        guidance,
        negativePrompt,
        prediction: flags.prediction,
        timestep,
        format: flags.format,
        outputFormat: flags['output-format'],
        shardSize: flags['shard-size'],
        imagesPerPrompt: perPrompt,
        grid: flags.grid,
        quality: flags.quality,
        nameTemplate: flags.name,
        resume: flags.resume,
        strict: flags.strict,
        shard,
        latentsFile: flags.latents,
        initImage: flags['init-image'],
        strength: flags.strength,
        initLatentMeanFile: flags['init-latent-mean'],
        signal: controller.signal,
        // The rate and ETA count from the model's load (not the start of the command), over the images made now; images
        // --resume found done count toward the total.
        onReady: () => (started = Date.now()),
        onSkip: (n) => (skipped = n),
        onImage: (done) => {
          const s = (Date.now() - started) / 1000;
          const rate = done / Math.max(s, 1e-3);
          const eta = total ? ` ETA ${Math.max(0, Math.round((total - skipped - done) / rate))} s` : '';
          progress.update(`${skipped + done}${total ? `/${total}` : ''} images${skipped ? ` (${skipped} already done)` : ''}, ${rate.toFixed(2)} img/s${eta}`);
        },
        onWarning: warn,
        onIssue: (line, message) => warn(`${args.prompts ?? '--prompt'}:${line}: ${message} (skipped)`),
      }).catch((err) => {
        progress.fail();
        throw err;
      });
      const line = `${summary.images} images in ${summary.seconds} s (${summary.images_per_second} img/s) on ${summary.device} -> ${summary.out}` +
        (summary.skipped_existing ? `, ${summary.skipped_existing} already done` : '') +
        (summary.bad_lines ? `, ${summary.bad_lines} bad lines skipped` : '') +
        (summary.dropped ? `, ${summary.dropped} dropped at the interrupt` : '') +
        (summary.non_finite ? `, ${summary.non_finite} not written (NaN/Inf)` : '');
      progress.succeed(line);
      if (flags.json) this.log(JSON.stringify(summary));
      if (summary.interrupted) this.exit(130);
      if (summary.non_finite) {
        throw new OnestepError(
          `${summary.non_finite} image(s) came out of the model as NaN/Inf and were not written (see the warnings above).`,
          'Check the model (onestep inspect), the guidance and the LoRA scales; --resume retries only those images.',
        );
      }
    } finally {
      process.off('SIGINT', onSigint);
      process.off('SIGTERM', onSigint);
    }
  }
}
