// Peer for the media probe benchmark: sharp (libvips) plus the blurhash npm package.
//
// Usage: node peer_sharp.cjs SECONDS FILE... (with NODE_PATH at the node_modules holding both); prints one
// JSON line per file like rust/benches/media.rs. Each probe starts from the file's bytes in memory: type
// and size from metadata() (header only), a resize to fit 64x64 (the working size of ours; libvips
// shrinks JPEG on load in the DCT domain), then the BlurHash 4x3.
"use strict";
const { readFileSync, writeFileSync } = require("node:fs");
const sharp = require("sharp");
const { encode } = require("blurhash");

function statusKib(field) {
  const line = readFileSync("/proc/self/status", "utf8").split("\n").find((l) => l.startsWith(field));
  return line ? parseInt(line.split(/\s+/)[1], 10) : 0;
}

async function probe(data) {
  const meta = await sharp(data).metadata();
  const { data: pixels, info } = await sharp(data, { sequentialRead: true })
    .resize(64, 64, { fit: "inside" })
    .ensureAlpha()
    .raw()
    .toBuffer({ resolveWithObject: true });
  const hash = encode(new Uint8ClampedArray(pixels), info.width, info.height, 4, 3);
  return { mime: "image/" + meta.format, width: meta.width, height: meta.height, blurhash: hash };
}

async function main() {
const [seconds, ...files] = process.argv.slice(2);
for (const path of files) {
  const data = readFileSync(path);
  writeFileSync("/proc/self/clear_refs", "5"); // reset the peak RSS to the current RSS
  const rssBefore = statusKib("VmRSS:");
  const first = await probe(data);
  const rssGrowth = Math.max(0, statusKib("VmHWM:") - rssBefore);
  const times = [];
  const start = performance.now();
  const cpuStart = process.cpuUsage();
  while (times.length < 5 || (performance.now() - start < seconds * 1000 && times.length < 1000)) {
    const t = performance.now();
    await probe(data);
    times.push(performance.now() - t);
  }
  const cpu = process.cpuUsage(cpuStart);
  const cpuMs = (cpu.user + cpu.system) / 1000 / times.length;
  times.sort((a, b) => a - b);
  const median = times.length % 2 ? times[(times.length - 1) / 2] : (times[times.length / 2 - 1] + times[times.length / 2]) / 2;
  console.log(JSON.stringify({ file: path, median_ms: median, min_ms: times[0], cpu_ms: cpuMs, runs: times.length,
    rss_growth_kib: rssGrowth, ...first }));
}
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
