/**
 * Secrets recognised by their shape: credential formats that secret scanners (gitleaks,
 * detect-secrets) know on sight, replaced wherever they turn up, whatever name is next to them.
 *
 * A copy of the Python SDK's `SHAPE_RULES` (`tracelab/sdk/redaction.py`), pattern for pattern
 * (Python's `\Z` is `$` here: no `m` flag), so both SDKs and the proxy redact the same text the
 * same way; spec/redaction/ holds the examples all three are tested against. When a rule has a
 * group, the group is the secret and the rest is context that stays (`Bearer `, `https://ada:`).
 */

export const MARKER = "[REDACTED]";

const TOKEN = "[A-Za-z0-9_.~+/=-]";

/** (rule id, pattern source). */
export const SHAPE_RULES: ReadonlyArray<readonly [string, string]> = [
  ["private-key", "-----BEGIN[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----(?:[\\s\\S]*?" +
    "-----END[ A-Z0-9_-]{0,100}PRIVATE KEY(?: BLOCK)?-----|[\\s\\S]*$)"],
  ["url-userinfo", "(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\\s/?#@:\"'<>]*:" +
    "([^\\s/?#@\"'<>]+)@"],
  ["bearer", "(?<![A-Za-z0-9])(?:[Bb]earer|BEARER|[Bb]asic|BASIC)\\s+" +
    `(?=[A-Za-z]*[0-9_.~+/=-])(${TOKEN}{6,})`],
  ["jwt", "(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{8,}\\.eyJ[A-Za-z0-9_-]{8,}\\.[A-Za-z0-9_-]*"],
  ["aws-access-key-id", "(?<![A-Za-z0-9])(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}(?![A-Za-z0-9])"],
  ["stripe-key", "(?<![A-Za-z0-9])(?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,}"],
  ["stripe-webhook-secret", "(?<![A-Za-z0-9])whsec_[A-Za-z0-9]{20,}"],
  ["anthropic-key", "(?<![A-Za-z0-9_-])sk-ant-[A-Za-z0-9_-]{20,}"],
  ["openai-key", "(?<![A-Za-z0-9_-])sk-[A-Za-z0-9_-]{20,}"],
  ["github-token", "(?<![A-Za-z0-9_])gh[pousr]_[A-Za-z0-9]{20,}"],
  ["github-fine-grained-pat", "(?<![A-Za-z0-9_])github_pat_[A-Za-z0-9_]{22,}"],
  ["gitlab-token", "(?<![A-Za-z0-9_])glpat-[A-Za-z0-9_-]{20,}"],
  ["slack-token", "(?<![A-Za-z0-9])xox[abpors]-[A-Za-z0-9-]{10,}"],
  ["slack-webhook", "hooks\\.slack\\.com/(?:services|workflows|triggers)/([A-Za-z0-9+/]{20,})"],
  ["google-api-key", "(?<![A-Za-z0-9_-])AIza[A-Za-z0-9_-]{30,}"],
  ["sendgrid-key", "(?<![A-Za-z0-9])SG\\.[A-Za-z0-9_-]{10,}\\.[A-Za-z0-9_-]{10,}"],
  ["huggingface-token", "(?<![A-Za-z0-9_])hf_[A-Za-z0-9]{30,}"],
  ["npm-token", "(?<![A-Za-z0-9_])npm_[A-Za-z0-9]{36,}"],
];

// What every rule above needs to find in the text (a hit only means "look closer").
const HINT = new RegExp(
  "PRIVATE KEY|://[^\\s/\"]*@|[Bb]earer|BEARER|[Bb]asic|BASIC|eyJ|A[KS]IA|ABIA|ACCA|A3T|_live_|" +
    "_test_|_prod_|whsec_|sk-|gh[pousr]_|github_pat_|glpat-|xox|hooks\\.slack|AIza|SG\\.|hf_|npm_");

/** A credential prefix at the very end of a cut text: the rest of the value was cut off. */
export const TAIL_RULES = new RegExp(
  "(?:(?<![A-Za-z0-9_-])(?:AKIA|ASIA|ABIA|ACCA|(?:sk|rk)_(?:live|test|prod)_|whsec_|sk-|" +
    `gh[pousr]_|github_pat_|glpat-|xox[abpors]-|AIza|SG\\.|eyJ|hf_|npm_)${TOKEN}*` +
    `|(?<![A-Za-z0-9])(?:[Bb]earer|BEARER|[Bb]asic|BASIC)\\s+(${TOKEN}+)` +
    // The lookbehind (as in url-userinfo) keeps this from being tried at every position of a
    // long alphanumeric run, which made a cut of 64 KiB of base64 cost seconds (quadratic).
    "|(?<![A-Za-z0-9+.-])[A-Za-z][A-Za-z0-9+.-]*://[^\\s/?#@:\"'<>]*:([^\\s/?#@\"'<>]+))$");

interface Compiled {
  all: RegExp;
  /** Per rule (by index): the number of its secret group in `all`. */
  secretGroup: number[];
}

function compile(): Compiled {
  const parts: string[] = [];
  const secretGroup: number[] = [];
  let index = 0;
  for (const [i, [, pattern]] of SHAPE_RULES.entries()) {
    const inner = new RegExp(`${pattern}|`).exec("")!.length - 1;
    index += 1;
    secretGroup.push(inner ? index + 1 : index);
    parts.push(`(?<r${i}>${pattern})`);
    index += inner;
  }
  return { all: new RegExp(parts.join("|"), "gd"), secretGroup };
}

const SHAPES = compile();

/** False when no credential shape can be in `text` (the cheap literal pre-check). */
export function mayHoldShapes(text: string): boolean {
  return HINT.test(text);
}

function ruleOf(groups: Record<string, string | undefined> | undefined): number {
  for (const name in groups) if (groups[name] !== undefined) return Number(name.slice(1));
  return -1;
}

/** (rule id, start, end) of each secret-shaped part of `text` not already redacted. */
export function findShapes(text: string): Array<[string, number, number]> {
  if (!HINT.test(text)) return [];
  const found: Array<[string, number, number]> = [];
  for (const m of text.matchAll(SHAPES.all)) {
    const rule = ruleOf(m.groups);
    const [start, end] = m.indices![SHAPES.secretGroup[rule]]!;
    if (text.slice(start, end) !== MARKER) found.push([SHAPE_RULES[rule][0], start, end]);
  }
  return found;
}

/** Every secret-shaped part of `text` replaced by the marker. */
export function redactShapes(text: string): string {
  if (!HINT.test(text)) return text;
  let out = "";
  let last = 0;
  for (const m of text.matchAll(SHAPES.all)) {
    const [start, end] = m.indices![SHAPES.secretGroup[ruleOf(m.groups)]]!;
    if (text.slice(start, end) === MARKER) continue;
    out += text.slice(last, start) + MARKER;
    last = end;
  }
  return last === 0 ? text : out + text.slice(last);
}
