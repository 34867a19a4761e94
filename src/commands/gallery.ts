import { Args, Flags } from '@oclif/core';
import { OnestepCommand } from '../cli/base-command.js';
import { Progress } from '../cli/progress.js';
import { buildGallery, DEFAULT_PAGE_SIZE, DEFAULT_THUMB_SIZE } from '../gallery.js';

export default class Gallery extends OnestepCommand {
  static description = `Write a contact sheet of a generate output folder: index.html beside the images, opened from disk.

Each card shows the thumbnail (linked to the full image), prompt, seed, size and model; the page filters by text and \
shows one page of cards at a time, so it stays fast on 100k images. Thumbnails (WebP, in .gallery/thumbs) are made \
once: a rerun makes only those of new or regenerated images.`;
  static args = { folder: Args.string({ description: 'the output folder of onestep generate (holds manifest.jsonl)', required: true }) };
  static flags = {
    'thumb-size': Flags.integer({ description: 'longest side of a thumbnail in pixels', default: DEFAULT_THUMB_SIZE, min: 16, max: 1024 }),
    'page-size': Flags.integer({ description: 'cards per page', default: DEFAULT_PAGE_SIZE, min: 1 }),
    quiet: Flags.boolean({ char: 'q', description: 'no progress output' }),
    json: Flags.boolean({ description: 'print the summary as JSON on stdout' }),
  };
  static examples = ['<%= config.bin %> gallery outputs', '<%= config.bin %> gallery out/shard-03 --page-size 200 --json'];

  async run(): Promise<void> {
    const { args, flags } = await this.parse(Gallery);
    const progress = new Progress(flags.quiet);
    const summary = await buildGallery({
      dir: args.folder,
      thumbSize: flags['thumb-size'],
      pageSize: flags['page-size'],
      onProgress: (done, total) => progress.update(`thumbnails ${done}/${total}`),
    }).catch((err) => {
      progress.fail();
      throw err;
    });
    progress.succeed(
      `${summary.images} images -> ${summary.index} (${summary.thumbnails_made} thumbnails made, ${summary.thumbnails_kept} kept` +
        `${summary.left_out ? `, ${summary.left_out} not shown: in webdataset shards or gone` : ''}) in ${summary.seconds} s`,
    );
    if (flags.json) this.log(JSON.stringify(summary));
  }
}
