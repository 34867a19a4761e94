import { Args, Flags } from '@oclif/core';
import { OnestepCommand } from '../cli/base-command.js';
import { formatBytes, Progress } from '../cli/progress.js';
import { convertCheckpoint } from '../convert.js';
import { precision, sharedFlags } from '../cli/flags.js';

export default class Convert extends OnestepCommand {
  static description =
    'Build ONNX graphs from a checkpoint (SD 1.x/2.x, SDXL, SDXS, ...: single .safetensors file or diffusers folder) into a model directory for `onestep generate`.';
  static examples = [
    '<%= config.bin %> convert sd-turbo.safetensors -o models/sd-turbo --recipe sd-turbo',
    '<%= config.bin %> convert ./stable-diffusion-2-1 -o models/sd21 --dtype fp16',
    '<%= config.bin %> convert sd-turbo.safetensors -o models/sd-turbo-taesd --recipe sd-turbo --taesd ./taesd',
    '<%= config.bin %> convert sd_xl_base_1.0.safetensors --unet Hyper-SDXL-1step-Unet.safetensors -o models/hyper-sdxl',
  ];
  static args = { checkpoint: Args.string({ description: 'a .safetensors checkpoint or a diffusers folder', required: true }) };
  static flags = {
    out: Flags.string({ char: 'o', description: 'model directory to write', required: true }),
    dtype: sharedFlags.precision('weight and compute precision (default: fp32; fp16 with --target cuda)'),
    target: Flags.option({
      description: 'cpu: standard ops that run anywhere; cuda: ONNX Runtime\'s CUDA-only fused ops (NHWC GroupNorm, NhwcConv, packed QKV attention, ...), for --device cuda only',
      options: ['cpu', 'cuda'] as const,
      default: 'cpu' as const,
    })(),
    quantize: Flags.option({
      description: 'int8: the UNet and VAE decoder as int8 graphs for the CPU (QLinearConv / QLinearMatMul), calibrated on one fixed reference image; faster on x86 CPUs, slightly lower quality (see bench/README.md)',
      options: ['int8'] as const,
    })(),
    force: Flags.boolean({ description: 'replace an existing output directory' }),
    prediction: sharedFlags.prediction('what the UNet predicts (a single file cannot tell; SD 2.x 768 models are v_prediction)'),
    config: Flags.string({
      description: 'for a single file: a diffusers folder with its configs (head counts are not in tensor shapes); default: a same-named folder beside the file, if any',
    }),
    recipe: sharedFlags.recipe,
    lora: sharedFlags.lora('LoRA file[:scale] merged on the fly (repeatable)'),
    taesd: Flags.string({
      description: 'write vae_decoder.onnx from TAESD (an AutoencoderTiny folder or taesd_decoder.safetensors): ~18x fewer FLOPs than the VAE decoder, softer details',
    }),
    unet: Flags.string({
      description: 'a UNet alone (file or folder, diffusers or LDM keys; Hyper-SDXL-1step-Unet, SDXL-Lightning, NitroFusion, DMD2) used instead of the checkpoint\'s',
    }),
    vae: Flags.string({ description: 'a VAE alone (file or folder, diffusers or LDM keys; e.g. sdxl-vae-fp16-fix) used instead of the checkpoint\'s' }),
    'allow-unmatched': Flags.boolean({ description: 'skip LoRA keys that match no module instead of failing' }),
    quiet: sharedFlags.quiet,
  };

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Convert);
    const progress = new Progress(flags.quiet);
    const started = Date.now();
    const result = await convertCheckpoint(args.checkpoint, {
      out: flags.out,
      dtype: precision(flags.dtype),
      target: flags.target,
      quantize: flags.quantize,
      force: flags.force,
      prediction: flags.prediction,
      recipe: flags.recipe,
      configDir: flags.config,
      loras: flags.lora ?? [],
      allowUnmatched: flags['allow-unmatched'],
      taesd: flags.taesd,
      unet: flags.unet,
      vae: flags.vae,
      onProgress: (p) => {
        const s = (Date.now() - started) / 1000;
        progress.update(`${p.component}: ${p.tensors}/${p.totalTensors} tensors, ${formatBytes(p.bytes)} (${formatBytes(p.bytes / Math.max(s, 1e-3))}/s)`);
      },
    }).catch((err) => {
      progress.fail();
      throw err;
    });
    const s = (Date.now() - started) / 1000;
    progress.succeed(`converted ${args.checkpoint} -> ${result.out} (${formatBytes(result.bytes)} of weights in ${s.toFixed(1)} s)`);
    for (const note of result.notes) this.logToStderr(`note: ${note}`);
    if (result.loraReport) this.logToStderr(result.loraReport);
    const m = result.manifest;
    this.log(`${result.out}: ${m.family}, ${m.dtype}${m.quantize ? ` (${m.quantize} UNet and decoder)` : ''}, recipe ${m.recipe.name} (${m.recipe.prediction_type} at t=${m.recipe.timestep}, guidance ${m.recipe.guidance})`);
  }
}
