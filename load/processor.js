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
 * responses with stored rows: bookings.created counts 201s that created a booking, replays are
 * counted apart (a replayed 201 is the same booking again). No guest personal data is logged.
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

const workerStartedAt = Date.now();
let plan = null;
let schedule = null;
let inFlightUsers = 0;
// Requests other diners may resend (duplicates phase) and the booking id each 201 created, to
// check that a replay answers with the same booking.
const duplicatePool = [];
const createdByKey = new Map();

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
  let body;
  if (mode === 'duplicates' && duplicatePool.length > 0 && Math.random() < 0.3) {
    // Resend another diner's request: same key, same body (its response may still be pending).
    const other = pick(duplicatePool);
    context.vars.key = other.key;
    context.vars.body = other.body;
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
  events.emit('counter', `load.requests.${mode}`, 1);
  if (replayed) {
    events.emit('counter', 'bookings.replayed', 1);
    events.emit('counter', `bookings.replayed_${status}`, 1);
  }
  let pauseMs = 0;
  if (status === 201) {
    let bookingId = null;
    try {
      bookingId = JSON.parse(response.body).booking.id;
    } catch (_err) {
      bookingId = null;
    }
    const key = context.vars.key;
    if (!replayed) {
      events.emit('counter', 'bookings.created', 1);
      events.emit('counter', 'bookings.created_covers', context.vars.body.partySize);
      createdByKey.set(key, bookingId);
      if (createdByKey.size > 5000) {
        createdByKey.delete(createdByKey.keys().next().value);
      }
    } else if (createdByKey.has(key) && createdByKey.get(key) !== bookingId) {
      // A replay must return the booking the first request created.
      events.emit('counter', 'bookings.replay_mismatch', 1);
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
  pace,
  // exported for the unit checks in tests
  _internals: { loadSchedule, resolveEnv, bookingBody }
};
