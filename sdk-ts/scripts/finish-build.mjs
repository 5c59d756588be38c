// After `tsc`: mark each output tree with its module system, so Node loads dist/cjs as
// CommonJS and dist/esm as ES modules whatever the root package.json says.
import { writeFileSync } from "node:fs";

writeFileSync(new URL("../dist/cjs/package.json", import.meta.url), '{ "type": "commonjs" }\n');
writeFileSync(new URL("../dist/esm/package.json", import.meta.url), '{ "type": "module" }\n');
