// Runs the dashboard's API client (the page's "api-client" section, put in
// place of the marker line below by agent/tests/api.rs) under Node against a
// real agent API at $API whose token is $TOKEN, the way the page runs it in
// a browser, and prints what it saw as one JSON line.
"use strict";
const BASE = process.env.API;
const TOKEN = process.env.TOKEN;

// What a browser tab has and Node lacks: relative URLs resolve against the
// page's origin, and per-tab session storage. Every request is recorded.
const sent = [];
const nodeFetch = globalThis.fetch;
globalThis.fetch = (path, init) => {
  sent.push({ path, init });
  return nodeFetch(BASE + path, init);
};
const store = new Map();
globalThis.sessionStorage = {
  getItem: (k) => (store.has(k) ? store.get(k) : null),
  setItem: (k, v) => store.set(k, String(v)),
};

/* api-client */

async function status(out, key) {
  let asked = null;
  onUnauthorized = (m) => { asked = m; };
  try {
    out[key] = (await api("/v1/status")).leaf;
  } catch (e) {
    out[key] = e.status;
  }
  out[key + "_asked"] = asked;
}

(async () => {
  const out = {};
  await status(out, "no_token");
  sessionStorage.setItem(TOKEN_KEY, "not-the-token-0123456789");
  await status(out, "wrong_token");
  sessionStorage.setItem(TOKEN_KEY, TOKEN);
  await status(out, "token");
  const sql = 'SELECT COUNT(*) AS n FROM "/"';
  out.query = (await api("/v1/query", { method: "POST", json: { sql } })).columns;
  out.afcs = (await api("/v1/afcs")).length;
  const ctl = new AbortController();
  out.first_event = await new Promise((resolve, reject) => {
    const on = (name, data) => { ctl.abort(); resolve({ name, zone: data.zone }); };
    events("/v1/watch?table=true&zone=/", on, ctl.signal).catch((e) => {
      if (!ctl.signal.aborted) reject(e);
    });
  });
  out.body_types = sent
    .filter((s) => s.init && s.init.body !== undefined)
    .map((s) => s.init.headers["content-type"]);
  out.token_in_url = sent.some((s) => s.path.includes(TOKEN));
  console.log(JSON.stringify(out));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
