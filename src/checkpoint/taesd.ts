/**
 * Opening a TAESD decoder from disk (architectures/taesd.ts is its graph): an AutoencoderTiny folder, madebyollin's
 * taesd_decoder.safetensors (or a folder holding it), renamed to the canonical `taesd.decoder.layers.N...`.
 */
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { inferTaesdDecoderConfig, normalizeTaesdConfig, TAESD_PREFIX, type TaesdDecoderConfig } from '../architectures/taesd.js';
import { BadInputError } from '../errors.js';
import { TensorSet } from '../safetensors/tensor-set.js';
import { MappedSource } from './sources.js';

export interface OpenedTaesd {
  weights: MappedSource;
  config: TaesdDecoderConfig;
  layout: 'diffusers' | 'taesd';
  /** The safetensors file read. */
  file: string;
}

/**
 * A TAESD decoder from an AutoencoderTiny folder (config.json + diffusion_pytorch_model.safetensors), madebyollin's
 * taesd_decoder.safetensors (or a folder holding it), or any safetensors file in one of those namings.
 * Weights come out under `taesd.decoder.layers.N...`; encoder tensors are left out.
 */
export async function openTaesd(input: string): Promise<OpenedTaesd> {
  const st = await stat(input).catch(() => {
    throw new BadInputError(input, 'no such file or folder', 'Pass an AutoencoderTiny folder or a taesd_decoder.safetensors file.');
  });
  let file = input;
  let configFile: string | undefined;
  if (st.isDirectory()) {
    const exists = (name: string) => stat(path.join(input, name)).then((s) => s.isFile(), () => false);
    if (await exists('config.json')) configFile = path.join(input, 'config.json');
    if (await exists('diffusion_pytorch_model.safetensors')) file = path.join(input, 'diffusion_pytorch_model.safetensors');
    else if (await exists('taesd_decoder.safetensors')) file = path.join(input, 'taesd_decoder.safetensors');
  }
  const set = await TensorSet.open(file);
  try {
    const names = set.names();
    let layout: OpenedTaesd['layout'];
    let rename: (key: string) => string | undefined;
    if (names.some((n) => n.startsWith('decoder.layers.'))) {
      layout = 'diffusers';
      rename = (k) => (k.startsWith('decoder.layers.') ? `${TAESD_PREFIX}.${k.slice('decoder.'.length)}` : undefined);
    } else if (names.some((n) => /^(decoder\.)?\d+\./.test(n))) {
      // madebyollin's nn.Sequential starts with the weightless Clamp: its index N is diffusers' N - 1.
      layout = 'taesd';
      rename = (k) => {
        const m = /^(?:decoder\.)?(\d+)\.(.+)$/.exec(k);
        return m ? `${TAESD_PREFIX}.layers.${Number(m[1]) - 1}.${m[2]}` : undefined;
      };
    } else {
      throw new BadInputError(set.files[0]?.path ?? file, 'holds no TAESD decoder weights (no decoder.layers.* or numbered layers)', 'Pass an AutoencoderTiny folder or madebyollin\'s taesd_decoder.safetensors (not the encoder).');
    }
    const entries = names.flatMap((key) => {
      const name = rename(key);
      return name ? [[name, { set, ref: { key } }] as [string, { set: TensorSet; ref: { key: string } }]] : [];
    });
    const weights = new MappedSource(entries, [set], file);
    const inferred = inferTaesdDecoderConfig(weights, file);
    let config = inferred;
    if (configFile) {
      let json: Record<string, any>;
      try {
        json = JSON.parse(await readFile(configFile, 'utf8'));
      } catch (e) {
        throw new BadInputError(configFile, `cannot be read as JSON (${(e as Error).message})`);
      }
      config = normalizeTaesdConfig(json, configFile);
      const same = (a: unknown, b: unknown) => JSON.stringify(a) === JSON.stringify(b);
      for (const k of ['latent_channels', 'out_channels', 'num_decoder_blocks'] as const) {
        if (!same(config[k], inferred[k])) {
          throw new BadInputError(configFile, `says ${k} ${JSON.stringify(config[k])}, but the weights in ${file} have ${JSON.stringify(inferred[k])}`);
        }
      }
    }
    return { weights, config, layout, file };
  } catch (e) {
    await set.close();
    throw e;
  }
}
