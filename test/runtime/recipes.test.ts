import assert from 'node:assert/strict';
import { OnestepError } from '../../src/errors.js';
import { detectRecipe, recipeByName, RECIPES, resolveRecipe } from '../../src/runtime/recipes.js';

describe('runtime/recipes', () => {
  it('carries the values of DESIGN.md section 4', () => {
    const table: Record<string, [string, number, number]> = {
      'sd-turbo': ['epsilon', 999, 0],
      swiftbrush: ['epsilon', 999, 0],
      dmd2: ['epsilon', 999, 0],
      yoso: ['epsilon', 999, 1],
      'yoso-pixart-512': ['v_prediction', 999, 1],
      'yoso-pixart-1024': ['v_prediction', 999, 1],
      'pixart-dmd': ['epsilon', 400, 1],
      instaflow: ['flow', 1000, 0],
      ufogen: ['sample', 999, 0],
      'hyper-sd': ['epsilon', 999, 0],
    };
    for (const [name, [prediction, timestep, guidance]] of Object.entries(table)) {
      const r = recipeByName(name, 'flag');
      assert.deepEqual([r.prediction_type, r.timestep, r.guidance], [prediction, timestep, guidance], name);
    }
    assert.equal(RECIPES.yoso.informative_prior, true);
  });

  it('recognises published files by name, most specific first', () => {
    assert.equal(detectRecipe(['sd_turbo.safetensors'])?.name, 'sd-turbo');
    assert.equal(detectRecipe(['Hyper-SD15-1step-lora.safetensors'])?.name, 'hyper-sd');
    assert.equal(detectRecipe(['yoso-pixart-512'])?.name, 'yoso-pixart-512');
    assert.equal(detectRecipe(['yoso_pixart1024'])?.name, 'yoso-pixart-1024');
    assert.equal(detectRecipe(['PixArt-1024-yoso'])?.name, 'yoso-pixart-1024');
    assert.equal(detectRecipe(['yoso_lora.safetensors'])?.name, 'yoso');
    assert.equal(detectRecipe(['instaflow_0_9B_from_sd_1_5'])?.name, 'instaflow');
    assert.equal(detectRecipe(['v1-5-pruned-emaonly.safetensors']), undefined);
    assert.equal(detectRecipe(['model.safetensors'], { 'modelspec.title': 'SD-Turbo' })?.name, 'sd-turbo');
  });

  it('resolves: explicit > detected (same family) > scheduler config; --prediction overrides any', () => {
    const base = { family: 'sd2' as const, schedulerPrediction: 'v_prediction' as const };
    assert.deepEqual(
      [resolveRecipe(base).name, resolveRecipe(base).prediction_type, resolveRecipe(base).timestep],
      ['default', 'v_prediction', 999],
    );
    assert.equal(resolveRecipe({ ...base, detected: { name: 'sd-turbo', why: 'x' } }).name, 'sd-turbo');
    // A detected recipe of another family is ignored.
    assert.equal(resolveRecipe({ ...base, detected: { name: 'instaflow', why: 'x' } }).name, 'default');
    assert.equal(resolveRecipe({ ...base, explicit: 'swiftbrush', predictionFlag: 'v_prediction' }).prediction_type, 'v_prediction');
    assert.throws(() => resolveRecipe({ ...base, explicit: 'instaflow' }), OnestepError);
    assert.throws(() => recipeByName('nope', 'flag'), /unknown recipe "nope"/);
  });
});
