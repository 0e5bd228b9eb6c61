// Command-line options of the Node scripts: `--name value` pairs, each name known, with defaults.

export function parseArgs(defaults, required) {
  const out = { ...defaults };
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    const key = argv[i].replace(/^--/, '');
    if (!argv[i].startsWith('--') || !(key in defaults) || argv[i + 1] === undefined) {
      throw new Error(`unknown or incomplete argument '${argv[i]}' (known: ` +
        `${Object.keys(defaults).map((k) => `--${k}`).join(', ')})`);
    }
    out[key] = argv[i + 1];
  }
  for (const key of required) {
    if (!out[key]) throw new Error(`--${key} is required`);
  }
  return out;
}
