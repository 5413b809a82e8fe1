// Records real tokenizer counts for the corpus in this folder into counts.json.
// How: mkdir /tmp/tok && cd /tmp/tok && npm install gpt-tokenizer   (4.0.0 ships the BPE ranks)
//      NODE_PATH=/tmp/tok/node_modules node tests/data/tokens/record.js
// tiktoken's Python package downloads its encodings at run time; gpt-tokenizer ships them.
const fs = require("fs");
const path = require("path");
const o200k = require("gpt-tokenizer/cjs/encoding/o200k_base");
const cl100k = require("gpt-tokenizer/cjs/encoding/cl100k_base");
const dir = __dirname;
const out = {};
for (const name of ["english.txt", "chinese.txt", "code.txt"]) {
  const text = fs.readFileSync(path.join(dir, name), "utf8");
  out[name] = { o200k_base: o200k.encode(text).length, cl100k_base: cl100k.encode(text).length };
}
out._tool = "gpt-tokenizer " + require("gpt-tokenizer/package.json").version;
fs.writeFileSync(path.join(dir, "counts.json"), JSON.stringify(out, null, 2) + "\n");
console.log(out);
