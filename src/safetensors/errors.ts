import { BadInputError } from '../errors.js';

/** A safetensors file (or index) that breaks one rule of the format. `rule` is a short stable id, e.g. `overlap`. */
export class SafetensorsError extends BadInputError {
  constructor(
    file: string,
    readonly rule: string,
    detail: string,
    readonly tensor?: string,
    hint = 'The file is damaged or was not written as safetensors; re-download or re-export it.',
  ) {
    super(file, `${tensor === undefined ? '' : `tensor "${tensor}": `}${detail} [safetensors rule: ${rule}]`, hint);
  }
}

/** Converting a tensor to float16 would turn finite values into infinities. */
export class F16OverflowError extends BadInputError {
  constructor(
    file: string,
    readonly tensor: string,
    readonly overflowCount: number,
    readonly maxAbs: number,
  ) {
    super(
      file,
      `tensor "${tensor}": ${overflowCount} finite value(s) exceed the float16 range (largest |value| ${maxAbs}, float16 max 65504)`,
      'Keep this tensor (or the model) in float32.',
    );
  }
}
