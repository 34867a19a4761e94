import assert from 'node:assert/strict';
import { OnestepError } from '../../src/errors.js';
import { img2imgDraws, img2imgTimestep, noisedInitLatents } from '../../src/runtime/img2img.js';
import { goldens, relErr } from '../support/fixtures.js';

describe('runtime/img2img', () => {
  it('denoises at the trailing-spacing timestep diffusers keeps for the strength (N = ceil(1/s) steps, the last one)', () => {
    assert.equal(img2imgTimestep(0.5), 499); // SD-Turbo's card: 2 steps at strength 0.5
    assert.equal(img2imgTimestep(0.25), 249);
    assert.equal(img2imgTimestep(1), 999);
    assert.equal(img2imgTimestep(0.3), 249); // N = 4
    assert.equal(img2imgTimestep(0.34), 332); // N = 3: round(1000 - 2 * 1000/3) - 1
    assert.equal(img2imgTimestep(0.05), 49); // N = 20
    for (const bad of [0, -0.5, 1.5, Number.NaN]) assert.throws(() => img2imgTimestep(bad), OnestepError);
  });

  for (const model of ['tiny-sd15', 'tiny-sd21'] as const) {
    for (const c of ['img2img_n2_s50', 'img2img_n4_s25']) {
      it(`${model} ${c}: the timestep, both draws of each seed and x_t equal the pipeline's`, () => {
        const g = goldens(`${model}-img2img`);
        const get = (n: string) => g.get(n)!;
        const seeds = get(`${c}.seeds`).data;
        const size = 4 * 8 * 8;
        const strength = c.endsWith('s50') ? 0.5 : 0.25;
        assert.deepEqual([...get(`${c}.timestep`).data], [img2imgTimestep(strength), img2imgTimestep(strength)]);
        const alphaBar = get(`${c}.alpha_bar`).data[0];
        for (let i = 0; i < seeds.length; i++) {
          const rows = (n: string) => get(n).data.subarray(i * size, (i + 1) * size);
          const draws = img2imgDraws(BigInt(seeds[i]), size);
          assert.deepEqual([...draws.posterior], [...rows(`${c}.posterior_eps`)]);
          assert.deepEqual([...draws.noise], [...rows(`${c}.noise`)]);
          const xt = noisedInitLatents(rows('img2img.posterior_mean'), rows('img2img.posterior_std'), draws, { scaling_factor: 0.18215, shift_factor: null }, alphaBar);
          // The pipeline computes (init + sigma * noise) / sqrt(sigma^2 + 1): the same value by another float32 route.
          assert.ok(relErr(xt, rows(`${c}.unet_input`)) < 1e-6, `x_t relErr ${relErr(xt, rows(`${c}.unet_input`))}`);
        }
      });
    }
  }

  it('a TAESD encoder (no posterior): the noise is the seed\'s first draw and z0 = scaling_factor * (latents - shift)', () => {
    const size = 4 * 8 * 8;
    const seed = 1234n;
    const draws = img2imgDraws(seed, size, false);
    assert.equal(draws.posterior, undefined);
    // diffusers draws nothing for AutoencoderTiny's latents: the noise is what the KL path draws as its posterior eps.
    assert.deepEqual([...draws.noise], [...img2imgDraws(seed, size).posterior]);
    const latents = Float32Array.from({ length: size }, (_, i) => Math.sin(i) * 2);
    const alphaBar = 0.3;
    for (const latent of [
      { scaling_factor: 1, shift_factor: null },
      { scaling_factor: 0.5, shift_factor: 0.25 },
    ]) {
      const xt = noisedInitLatents(latents, undefined, draws, latent, alphaBar);
      const ref = Float64Array.from(latents, (z, i) => Math.sqrt(alphaBar) * latent.scaling_factor * (z - (latent.shift_factor ?? 0)) + Math.sqrt(1 - alphaBar) * draws.noise[i]);
      assert.ok(relErr(xt, ref) < 1e-6, `relErr ${relErr(xt, ref)}`);
    }
    assert.throws(() => noisedInitLatents(latents, latents, draws, { scaling_factor: 1, shift_factor: null }, alphaBar), /posterior sample needs its draw/);
  });
});
