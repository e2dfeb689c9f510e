'use strict';
/*
 * Virtual users of the capacity load test (load/capacity-load.yml, load/capacity-smoke.yml).
 *
 * A virtual user is a diner: it reads one restaurant's availability, then books a few times with
 * a short, jittered think time between requests. What it books depends on the phase the run is
 * in (phase names in the scenario file select the behaviour, see MODES):
 *
 *   warm-up, ramp, spread   slots with room, spread over every open slot of every target restaurant
 *   contention              a few hot slots only (demand far above capacity), everyone at the same
 *                           instant every 500 ms; on a 409 the diner takes one of the first three
 *                           suggested alternatives, as a real client would, or tries the next
 *                           evening when none is left
 *   duplicates              every booking is resent with the same Idempotency-Key and body (a client
 *                           retrying after a timeout); some resends replay another diner's request
 *                           while it may still be in flight
 *   probe                   no think time: deliberately exceeds the usage plan, expects 429
 *
 * The plan (run id, restaurants, date, bookable times, hot slots) comes from the JSON file named by
 * LOAD_TEST_PLAN, which `capctl load` writes after reading availability; without it, from
 * LOAD_TEST_RESTAURANT_ID, LOAD_TEST_DATE, LOAD_TEST_TIMES, LOAD_TEST_RUN_ID.
 *
 * Custom counters (in Artillery's aggregate and per-period output) let `capctl load` reconcile
 * responses with stored rows: bookings.created counts the first 201 a diner saw for a key (the
 * booking acknowledged), any later 201 for that key is a replay (the same booking again). No guest
 * personal data is logged.
 *
 * Clients behave like real ones. POST /bookings, GET and DELETE /bookings/{id} are sent by this
 * processor (Node's fetch), not by Artillery's engine, because Artillery ends a virtual user on
 * its first timeout or refused connection and a real client retries instead: on a timeout, a
 * connection error, a 502/503/504 or a 409 idempotency_in_progress the diner waits (Retry-After,
 * else jittered exponential backoff) and resends the same request with the same Idempotency-Key,
 * at most maxAttempts times. Each attempt is timed into Artillery's own metric names: the
 * metrics-by-endpoint plugin's (plugins.metrics-by-endpoint.response_time.<name>, .<name>.codes.N,
 * every attempt) and http.requests per attempt sent; http.codes.N, http.responses and
 * http.response_time count a request's final answer only, the retried ones go to
 * load.retried.<status or error>. A request that stays unanswered after its last attempt counts
 * errors.<code>, as Artillery counts transport errors. Some diners cancel a booking they made
 * (cancelRatio), retrying a cancel whose answer was lost, and some read it back (readRatio).
 *
 * The history: with LOAD_TEST_HISTORY set, every attempt is appended to that file as one JSON
 * line {t, op: book|cancel|read, key, status, bookingId, replayed, attempt, code, error}: what the
 * client saw, checked afterwards against the database (src/capctl/history.py).
 */

const crypto = require('node:crypto');
const fs = require('node:fs');

const MODES = [
  ['probe', 'probe'],
  ['contention', 'contention'],
  ['duplicate', 'duplicates'],
  ['spread', 'spread'],
  ['ramp', 'spread'],
  ['warm', 'spread']
];
const POOL_SIZE = 200;
const MAX_RETRY_AFTER_S = 5;
// Answers a real client resends (same key): the gateway or the database is briefly away, or the
// same key is still being processed.
const RETRY_STATUSES = new Set([502, 503, 504]);
const BACKOFF_BASE_MS = 200;
const BACKOFF_CAP_MS = 3000;
const ENDPOINT = {
  availability: 'GET availability',
  book: 'POST /bookings',
  read: 'GET /bookings/{id}',
  cancel: 'DELETE /bookings/{id}'
};

// Replaced by the unit tests (no network, no real waiting).
let fetchImpl = (...args) => globalThis.fetch(...args);
let sleepImpl = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

const workerStartedAt = Date.now();
let plan = null;
let schedule = null;
let inFlightUsers = 0;
// Requests other diners may resend (duplicates phase) and the booking id each 201 created, to
// check that a replay answers with the same booking.
const duplicatePool = [];
const createdByKey = new Map();
let historyFd = null;

function defaultDate() {
  const d = new Date(Date.now() + 45 * 86400 * 1000);
  return d.toISOString().slice(0, 10);
}

function defaultTimes() {
  const times = [];
  for (let minutes = 17 * 60; minutes < 22 * 60; minutes += 15) {
    const hh = String(Math.floor(minutes / 60)).padStart(2, '0');
    const mm = String(minutes % 60).padStart(2, '0');
    times.push(`${hh}:${mm}`);
  }
  return times;
}

function loadPlan() {
  if (plan) {
    return plan;
  }
  const file = process.env.LOAD_TEST_PLAN;
  if (file) {
    plan = JSON.parse(fs.readFileSync(file, 'utf8'));
  } else {
    const ids = (process.env.LOAD_TEST_RESTAURANT_ID || '')
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    if (ids.length === 0) {
      throw new Error('LOAD_TEST_RESTAURANT_ID is not set');
    }
    const date = process.env.LOAD_TEST_DATE || defaultDate();
    const times = process.env.LOAD_TEST_TIMES
      ? process.env.LOAD_TEST_TIMES.split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : defaultTimes();
    const hotTimes = times.filter((t) => ['19:00', '19:15', '19:30'].includes(t));
    plan = {
      runId: process.env.LOAD_TEST_RUN_ID || `adhoc-${Date.now()}`,
      restaurants: ids.map((id) => ({ id, date, times })),
      hot: (hotTimes.length ? hotTimes : times.slice(0, 3)).map((time) => ({
        restaurantId: ids[0],
        date,
        time
      })),
      maxPartySize: Number(process.env.LOAD_TEST_MAX_PARTY || 4)
    };
  }
  plan.maxPartySize = plan.maxPartySize || 4;
  return plan;
}

// The phase timeline of this run, read from the scenario file itself so the file stays the one
// place that defines it. Values templated from the environment are resolved the same way.
function loadSchedule(scenarioFile) {
  if (schedule) {
    return schedule;
  }
  schedule = [];
  try {
    const yaml = requireYaml();
    const doc = yaml.load(fs.readFileSync(scenarioFile, 'utf8'));
    let endsAt = 0;
    for (const phase of doc.config.phases || []) {
      const seconds = Number(resolveEnv(phase.duration ?? phase.pause ?? 0)) || 0;
      endsAt += seconds * 1000;
      const name = String(phase.name || '').toLowerCase();
      const match = MODES.find(([word]) => name.includes(word));
      schedule.push({ name, mode: match ? match[1] : 'spread', seconds, endsAt });
    }
  } catch (err) {
    console.error(`processor: cannot read the phases of ${scenarioFile}: ${err.message}`);
  }
  return schedule;
}

// js-yaml comes with Artillery; look beside Artillery too in case npm did not hoist it.
function requireYaml() {
  try {
    return require('js-yaml');
  } catch (_err) {
    const artilleryDir = require('node:path').dirname(require.resolve('artillery/package.json'));
    return require(require.resolve('js-yaml', { paths: [artilleryDir] }));
  }
}

function resolveEnv(value) {
  if (typeof value !== 'string') {
    return value;
  }
  return value.replace(/\{\{\s*\$env\.(\w+)\s*\}\}/g, (_m, name) => process.env[name] || '0');
}

function currentMode(context) {
  const phases = loadSchedule(context.vars.$scenarioFile);
  const elapsed = Date.now() - workerStartedAt;
  let last = 'spread';
  for (const phase of phases) {
    if (elapsed < phase.endsAt) {
      return phase.mode;
    }
    if (phase.seconds > 0) {
      last = phase.mode;
    }
  }
  // A diner arriving after the timeline (clock skew between workers): the last real phase.
  return last;
}

// A knob from the scenario file's config.variables, else the default.
function setting(context, name, fallback) {
  const value = Number(context.vars[name]);
  return Number.isFinite(value) && context.vars[name] !== undefined ? value : fallback;
}

function pick(items) {
  return items[Math.floor(Math.random() * items.length)];
}

function newKey() {
  return `lt-${crypto.randomUUID()}`;
}

function bookingBody(restaurantId, date, time) {
  const partySize = 1 + Math.floor(Math.random() * loadPlan().maxPartySize);
  return {
    restaurantId,
    date,
    time,
    partySize,
    // Synthetic guest: never real personal data.
    guest: { name: 'Load Test Diner' },
    source: 'load-test',
    notes: 'synthetic load-test booking'
  };
}

// -- scenario hooks -------------------------------------------------------------------------

function startDiner(context, events, done) {
  const p = loadPlan();
  inFlightUsers += 1;
  events.emit('histogram', 'load.vusers_in_flight', inFlightUsers);
  const restaurant = pick(p.restaurants);
  context.vars.runId = p.runId;
  context.vars.apiKey = process.env.LOAD_TEST_SERVICE_KEY || '';
  context.vars.restaurantId = restaurant.id;
  context.vars.date = restaurant.date;
  context.vars.mode = currentMode(context);
  context.vars.openTimes = restaurant.times;
  context.vars.roomyTimes = null;
  context.vars.alternative = null;
  context.vars.hotDateIndex = 0;
  context.vars.bookingsLeft = context.vars.mode === 'probe' ? 20 : setting(context, 'bookingsPerDiner', 6);
  events.emit('counter', `load.diners.${context.vars.mode}`, 1);
  return done();
}

function endDiner(context, events, done) {
  inFlightUsers -= 1;
  return done();
}

function addHeaders(requestParams, context) {
  requestParams.headers = Object.assign({}, requestParams.headers, {
    'x-api-key': context.vars.apiKey,
    'X-Run-Id': context.vars.runId
  });
}

function prepareAvailability(requestParams, context, events, done) {
  addHeaders(requestParams, context);
  return done();
}

function readAvailability(requestParams, response, context, events, done) {
  if (response.statusCode === 200) {
    try {
      const slots = JSON.parse(response.body).slots || [];
      context.vars.roomyTimes = slots
        .filter((s) => s.remainingCovers === null || s.remainingCovers > 0)
        .map((s) => s.time);
    } catch (_err) {
      context.vars.roomyTimes = null;
    }
  } else if (response.statusCode === 429) {
    events.emit('counter', 'availability.rate_limited', 1);
    return setTimeout(done, retryAfterMs(response, context.vars.mode));
  }
  return done();
}

// How long a throttled diner waits: Retry-After, capped; the probe does not wait.
function retryAfterMs(response, mode) {
  if (mode === 'probe') {
    return 0;
  }
  // Retry-After is delay-seconds or an HTTP-date (RFC 9110); anything unreadable waits 1 s.
  const header = String(response.headers['retry-after'] || '1').trim();
  let retryAfter = /^\d+(\.\d+)?$/.test(header) ? Number(header) : (Date.parse(header) - Date.now()) / 1000;
  if (Number.isNaN(retryAfter)) {
    retryAfter = 1;
  }
  return Math.min(MAX_RETRY_AFTER_S, Math.max(retryAfter, 0.2)) * 1000;
}

function keepBooking(context, next) {
  return next(context.vars.bookingsLeft > 0);
}

// Chooses the next booking: its slot, party, fresh Idempotency-Key, and whether to resend it.
function nextBooking(context, events, done) {
  const p = loadPlan();
  const mode = context.vars.mode;
  context.vars.bookingsLeft -= 1;
  context.vars.resend = false;
  context.vars.foreign = false;
  let body;
  if (mode === 'duplicates' && duplicatePool.length > 0 && Math.random() < 0.3) {
    // Resend another diner's request: same key, same body (its response may still be pending).
    const other = pick(duplicatePool);
    context.vars.key = other.key;
    context.vars.body = other.body;
    context.vars.foreign = true;
    events.emit('counter', 'bookings.duplicate_sent', 1);
    return done();
  }
  if (context.vars.alternative) {
    const alt = context.vars.alternative;
    context.vars.alternative = null;
    body = bookingBody(alt.restaurantId, alt.date, alt.time);
    events.emit('counter', 'bookings.alternative_taken', 1);
  } else if (mode === 'contention' || mode === 'probe') {
    // The hot slots' times, on the evening this diner is still trying for.
    const hot = pick(p.hot);
    const dates = p.hotDates && p.hotDates.length ? p.hotDates : [hot.date];
    body = bookingBody(hot.restaurantId, dates[context.vars.hotDateIndex % dates.length], hot.time);
  } else {
    const roomy = context.vars.roomyTimes;
    const time = roomy && roomy.length ? pick(roomy) : pick(context.vars.openTimes);
    body = bookingBody(context.vars.restaurantId, context.vars.date, time);
  }
  context.vars.key = newKey();
  context.vars.body = body;
  if (mode === 'duplicates') {
    context.vars.resend = true;
    duplicatePool.push({ key: context.vars.key, body });
    if (duplicatePool.length > POOL_SIZE) {
      duplicatePool.shift();
    }
  }
  return done();
}

function markResendIfDue(context, events, done) {
  if (context.vars.resend) {
    events.emit('counter', 'bookings.duplicate_sent', 1);
  }
  return done();
}

function shouldResend(vars) {
  return vars.resend === true;
}

function prepareBooking(requestParams, context, events, done) {
  addHeaders(requestParams, context);
  requestParams.headers['Idempotency-Key'] = context.vars.key;
  requestParams.json = context.vars.body;
  return done();
}

function problemCode(response) {
  try {
    return JSON.parse(response.body).code || null;
  } catch (_err) {
    return null;
  }
}

// Classifies the response into counters; a 409 full slot hands its first alternative to the
// next booking; a 429 pauses this diner for Retry-After (capped) to respect the usage plan.
function recordOutcome(requestParams, response, context, events, done) {
  const status = response.statusCode;
  const replayed = String(response.headers['idempotent-replayed'] || '').toLowerCase() === 'true';
  const mode = context.vars.mode;
  const key = context.vars.key;
  events.emit('counter', `load.requests.${mode}`, 1);
  if (replayed) {
    events.emit('counter', 'bookings.replayed', 1);
    if (status !== 201) {
      events.emit('counter', `bookings.replayed_${status}`, 1);
    }
  }
  context.vars.bookingId = null;
  let pauseMs = 0;
  if (status === 201) {
    const bookingId = bookingIdOf(response);
    if (!createdByKey.has(key)) {
      // The booking acknowledged: the first 201 any diner saw for this key. It is a replay when
      // the answer to an earlier attempt was lost (the retry found the stored response).
      events.emit('counter', 'bookings.created', 1);
      events.emit('counter', 'bookings.created_covers', context.vars.body.partySize);
      if (replayed) {
        events.emit('counter', 'bookings.recovered', 1);
      }
      createdByKey.set(key, bookingId);
      if (createdByKey.size > 5000) {
        createdByKey.delete(createdByKey.keys().next().value);
      }
      context.vars.bookingId = context.vars.foreign ? null : bookingId;
    } else {
      // The same booking again (a deliberate duplicate, or a resend racing the original).
      events.emit('counter', 'bookings.replayed_201', 1);
      if (createdByKey.get(key) !== bookingId) {
        // A replay must return the booking the first request created.
        events.emit('counter', 'bookings.replay_mismatch', 1);
      }
    }
  } else if (status === 409) {
    const code = problemCode(response);
    events.emit('counter', `bookings.refused.${code || 'unknown'}`, 1);
    if ((code === 'capacity_exceeded' || code === 'slot_closed') && mode === 'contention' && !replayed) {
      try {
        const alternatives = JSON.parse(response.body).alternatives || [];
        // Alternatives are on the refused request's restaurant and date; none left means the
        // evening is full, so the diner tries the next one.
        if (alternatives.length) {
          const alt = pick(alternatives.slice(0, 3));
          context.vars.alternative = { restaurantId: context.vars.body.restaurantId, date: alt.date, time: alt.time };
        } else {
          context.vars.alternative = null;
          context.vars.hotDateIndex += 1;
        }
      } catch (_err) {
        context.vars.alternative = null;
      }
    }
  } else if (status === 429) {
    events.emit('counter', 'bookings.rate_limited', 1);
    pauseMs = retryAfterMs(response, mode);
  } else {
    events.emit('counter', 'bookings.unexpected', 1);
    // Status and problem code only: bodies could echo guest data.
    console.error(`unexpected response ${status} ${problemCode(response) || ''} for POST /bookings`);
  }
  if (pauseMs > 0) {
    return setTimeout(done, pauseMs);
  }
  return done();
}

function bookingIdOf(response) {
  try {
    return JSON.parse(response.body).booking.id || null;
  } catch (_err) {
    return null;
  }
}

// -- requests sent by the diner itself, retried like a real client ---------------------------

function appendHistory(row) {
  const file = process.env.LOAD_TEST_HISTORY;
  if (!file) {
    return;
  }
  try {
    if (historyFd === null) {
      historyFd = fs.openSync(file, 'a');
    }
    // One write of one short line on an O_APPEND file: lines of concurrent workers never mix.
    fs.writeSync(historyFd, `${JSON.stringify(row)}\n`);
  } catch (err) {
    console.error(`processor: cannot append to LOAD_TEST_HISTORY: ${err.code || err.message}`);
  }
}

function headerOf(headers, name) {
  if (!headers) {
    return undefined;
  }
  if (typeof headers.get === 'function') {
    return headers.get(name) ?? undefined;
  }
  return headers[name];
}

// How long to wait before attempt `attempt` + 1: Retry-After when the answer has one (capped),
// else full-jitter exponential backoff.
function retryDelayMs(response, attempt) {
  if (response && headerOf(response.headers, 'retry-after') !== undefined) {
    return retryAfterMs(response, 'retry');
  }
  return Math.random() * Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** attempt);
}

function isRetryable(response) {
  if (!response || response.error) {
    return true; // a timeout or a connection error: the request may or may not have been done
  }
  return (
    RETRY_STATUSES.has(response.statusCode) ||
    (response.statusCode === 409 && problemCode(response) === 'idempotency_in_progress')
  );
}

// One attempt: {statusCode, headers, body} or {error}. Times the attempt into the endpoint's
// metrics and appends it to the history.
async function attemptOnce(context, events, request, attempt) {
  const name = ENDPOINT[request.op];
  const headers = {
    accept: 'application/json',
    'x-api-key': context.vars.apiKey,
    'X-Run-Id': context.vars.runId
  };
  if (request.key) {
    headers['Idempotency-Key'] = request.key;
  }
  if (request.body) {
    headers['content-type'] = 'application/json';
  }
  const target = /^https?:\/\//.test(String(context.vars.target)) ? context.vars.target : null;
  const base = String(process.env.LOAD_TEST_BASE_URL || target || '').replace(/\/$/, '');
  const started = Date.now();
  events.emit('counter', 'http.requests', 1);
  events.emit('rate', 'http.request_rate');
  let result;
  try {
    const res = await fetchImpl(base + request.path, {
      method: request.method,
      headers,
      body: request.body ? JSON.stringify(request.body) : undefined,
      signal: AbortSignal.timeout(setting(context, 'requestTimeoutMs', 12000))
    });
    const body = await res.text();
    const plain = {};
    for (const [k, v] of res.headers) {
      plain[k.toLowerCase()] = v;
    }
    result = { statusCode: res.status, headers: plain, body };
    events.emit('counter', `plugins.metrics-by-endpoint.${name}.codes.${res.status}`, 1);
  } catch (err) {
    result = { error: errorCode(err) };
    events.emit('counter', `plugins.metrics-by-endpoint.${name}.errors.${result.error}`, 1);
  }
  const ms = Date.now() - started;
  result.ms = ms;
  if (!result.error) {
    events.emit('histogram', `plugins.metrics-by-endpoint.response_time.${name}`, ms);
  }
  if (request.op === 'availability') {
    return result;
  }
  appendHistory({
    t: Date.now(),
    op: request.op,
    key: request.key || null,
    status: result.statusCode ?? null,
    bookingId: result.error ? request.bookingId || null : bookingIdOf(result) || request.bookingId || null,
    replayed: String(headerOf(result.headers, 'idempotent-replayed') || '').toLowerCase() === 'true',
    attempt,
    code: result.error ? null : problemCode(result),
    error: result.error || null,
    ms
  });
  return result;
}

function errorCode(err) {
  const cause = err && err.cause;
  if (err && (err.name === 'TimeoutError' || err.name === 'AbortError')) {
    return 'ETIMEDOUT';
  }
  return (cause && cause.code) || (err && err.code) || (err && err.name) || 'Error';
}

// The request, resent until it gets an answer worth keeping or runs out of attempts; the final
// answer ({statusCode, …} or {error}) with the number of attempts made.
async function exchange(context, events, request) {
  const maxAttempts = setting(context, 'maxAttempts', 10);
  let result;
  for (let attempt = 1; ; attempt += 1) {
    result = await attemptOnce(context, events, request, attempt);
    if (!isRetryable(result) || attempt >= maxAttempts) {
      result.attempts = attempt;
      break;
    }
    events.emit('counter', `load.retried.${result.error || result.statusCode}`, 1);
    await sleepImpl(retryDelayMs(result.error ? null : result, attempt));
  }
  if (result.error) {
    // Unanswered after the last attempt: a transport error as Artillery counts them.
    events.emit('counter', `errors.${result.error}`, 1);
  } else {
    events.emit('counter', 'http.responses', 1);
    events.emit('counter', `http.codes.${result.statusCode}`, 1);
    events.emit('histogram', 'http.response_time', result.ms);
  }
  return result;
}

// POST /bookings with the key and body nextBooking chose; the final answer is classified by
// recordOutcome (counters, alternatives, Retry-After on a 429).
function sendBooking(context, events, done) {
  const request = { op: 'book', method: 'POST', path: '/bookings', key: context.vars.key, body: context.vars.body };
  exchange(context, events, request).then(
    (result) => {
      if (result.error) {
        context.vars.bookingId = null;
        events.emit('counter', `load.requests.${context.vars.mode}`, 1);
        return done();
      }
      return recordOutcome({}, result, context, events, done);
    },
    (err) => done(err)
  );
}

// GET availability of the diner's restaurant and date, retried like the others.
function sendAvailability(context, events, done) {
  const request = {
    op: 'availability',
    method: 'GET',
    path: `/restaurants/${encodeURIComponent(context.vars.restaurantId)}/availability?date=${encodeURIComponent(context.vars.date)}`
  };
  exchange(context, events, request).then(
    (result) => {
      if (result.error) {
        context.vars.roomyTimes = null;
        return done();
      }
      if (result.statusCode !== 200 && result.statusCode !== 429) {
        console.error(`unexpected response ${result.statusCode} ${problemCode(result) || ''} for GET availability`);
      }
      return readAvailability({}, result, context, events, done);
    },
    (err) => done(err)
  );
}

function sendResend(context, events, done) {
  if (!shouldResend(context.vars)) {
    return done();
  }
  return sendBooking(context, events, done);
}

// Some diners cancel the booking they just made (DELETE, retried when its answer is lost), some
// read it back (GET); both expect 200.
function followUp(context, events, done) {
  const bookingId = context.vars.bookingId;
  if (!bookingId || context.vars.mode === 'probe') {
    return done();
  }
  const roll = Math.random();
  const cancelRatio = setting(context, 'cancelRatio', 0.1);
  const readRatio = setting(context, 'readRatio', 0.1);
  let op;
  if (roll < cancelRatio) {
    op = 'cancel';
  } else if (roll < cancelRatio + readRatio) {
    op = 'read';
  } else {
    return done();
  }
  const request = {
    op,
    method: op === 'cancel' ? 'DELETE' : 'GET',
    path: `/bookings/${encodeURIComponent(bookingId)}`,
    bookingId
  };
  exchange(context, events, request).then(
    (result) => {
      if (!result.error && result.statusCode === 200) {
        events.emit('counter', op === 'cancel' ? 'bookings.cancelled' : 'bookings.read', 1);
        context.vars.bookingId = op === 'cancel' ? null : bookingId;
      } else if (!result.error) {
        events.emit('counter', 'bookings.unexpected', 1);
        console.error(`unexpected response ${result.statusCode} ${problemCode(result) || ''} for ${ENDPOINT[op]}`);
      }
      return done();
    },
    (err) => done(err)
  );
}

// Jittered think time between a diner's bookings (none in the probe phase).
function pace(context, events, done) {
  if (context.vars.mode === 'probe') {
    return done();
  }
  if (context.vars.mode === 'contention') {
    // Everyone books at the same instant, like a release of tables at a fixed time: the
    // requests for a slot arrive together, so the guarded write decides the races.
    const tick = setting(context, 'contentionTickMs', 500);
    return setTimeout(done, tick - (Date.now() % tick) + Math.random() * 5);
  }
  const min = setting(context, 'thinkMinMs', 300);
  const max = setting(context, 'thinkMaxMs', 900);
  return setTimeout(done, min + Math.random() * Math.max(0, max - min));
}

module.exports = {
  startDiner,
  endDiner,
  prepareAvailability,
  readAvailability,
  keepBooking,
  nextBooking,
  markResendIfDue,
  shouldResend,
  prepareBooking,
  recordOutcome,
  sendAvailability,
  sendBooking,
  sendResend,
  followUp,
  pace,
  // exported for the unit checks in tests
  _internals: {
    loadSchedule,
    resolveEnv,
    bookingBody,
    exchange,
    isRetryable,
    retryDelayMs,
    setFetch(fn) {
      fetchImpl = fn;
    },
    setSleep(fn) {
      sleepImpl = fn;
    }
  }
};
