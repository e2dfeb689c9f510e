'use strict';
/*
 * Unit checks of the load test's diners (load/processor.js), without Artillery or an API: each hook
 * is called as Artillery calls it, with a plain context ({vars}), an events emitter that records
 * what it is given and fake responses ({statusCode, headers, body}).
 *
 *   node --test load/processor.test.js      (tests/load/test_processor_js.py runs it under pytest)
 *
 * The processor keeps its plan, phase timeline, duplicate pool and created bookings in module
 * state, so every test loads a fresh copy with exactly the LOAD_TEST_* settings it names. The
 * phase a diner is in comes from a scenario file whose only phase lasts an hour.
 */

const { test, describe, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const PROCESSOR = require.resolve('./processor.js');
const LOAD_SCENARIO = path.join(__dirname, 'capacity-load.yml');
const SMOKE_SCENARIO = path.join(__dirname, 'capacity-smoke.yml');
const OPENAPI = path.join(__dirname, '..', 'docs', 'openapi.json');

const HOT_R = '6f1c2a4e-8b1d-4c3e-9a7f-1d2b3c4d5e6f';
const OTHER_R = '0b5e8c1a-3f2d-4e6b-8a9c-7d1e2f3a4b5c';
const HOT_TIMES = ['19:00', '19:15', '19:30'];
const HOT_DATES = ['2031-03-10', '2031-03-11', '2031-03-12'];
// The shape `capctl load` writes (src/capctl/load.py, Plan.as_json). OTHER_R comes first so that a
// diner with Math.random() = 0 sits on a restaurant other than the hot one.
const PLAN = {
  runId: 'run-unit-7',
  restaurants: [
    { id: OTHER_R, date: '2031-03-11', times: ['18:00', '18:15', '18:30'] },
    { id: HOT_R, date: '2031-03-10', times: ['18:00', '19:00', '19:15', '19:30', '20:00'] }
  ],
  hot: HOT_TIMES.map((time) => ({ restaurantId: HOT_R, date: HOT_DATES[0], time })),
  hotDates: HOT_DATES,
  maxPartySize: 4
};

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'processor-test-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

let files = 0;
function tempFile(name, content) {
  files += 1;
  const file = path.join(tmp, `${files}-${name}`);
  fs.writeFileSync(file, typeof content === 'string' ? content : JSON.stringify(content, null, 2));
  return file;
}

// A scenario file (JSON is YAML) with these phases.
function scenario(phases) {
  return tempFile('scenario.yml', { config: { phases } });
}

const modeScenario = {};
function scenarioFor(phaseName) {
  modeScenario[phaseName] ??= scenario([{ name: phaseName, duration: 3600, arrivalRate: 1 }]);
  return modeScenario[phaseName];
}

function clearLoadEnv() {
  for (const name of Object.keys(process.env)) {
    if (name.startsWith('LOAD_TEST_')) {
      delete process.env[name];
    }
  }
}

// A freshly required processor that sees exactly these LOAD_TEST_* variables (the test's own
// environment comes back after it).
const savedEnv = new WeakMap();
function fresh(t, env = {}) {
  if (!savedEnv.has(t)) {
    const saved = Object.fromEntries(Object.entries(process.env).filter(([name]) => name.startsWith('LOAD_TEST_')));
    savedEnv.set(t, saved);
    t.after(() => {
      clearLoadEnv();
      Object.assign(process.env, saved);
    });
  }
  clearLoadEnv();
  Object.assign(process.env, env);
  delete require.cache[PROCESSOR];
  return require(PROCESSOR);
}

function withPlan(t, plan = PLAN, env = {}) {
  return fresh(t, { LOAD_TEST_PLAN: tempFile('plan.json', plan), ...env });
}

// Artillery's events emitter, recording what the processor emits.
function recorder() {
  const emitted = [];
  return {
    emitted,
    emit(...args) {
      emitted.push(args);
    },
    counters() {
      const totals = {};
      for (const [type, name, value] of emitted) {
        if (type === 'counter') {
          totals[name] = (totals[name] || 0) + value;
        }
      }
      return totals;
    }
  };
}

// Calls a hook that must finish at once; returns what it passed to done.
function now(hook, ...args) {
  let calls = 0;
  let result;
  hook(...args, (...doneArgs) => {
    calls += 1;
    result = doneArgs;
  });
  assert.equal(calls, 1, `${hook.name} must call done once, synchronously`);
  return result;
}

// Calls a hook under mocked timers; returns how many ms it waited before calling done.
const timersEnabled = new WeakSet();
function waitOf(t, hook, ...args) {
  if (!timersEnabled.has(t)) {
    t.mock.timers.enable({ apis: ['setTimeout'] });
    timersEnabled.add(t);
  }
  let calls = 0;
  hook(...args, () => {
    calls += 1;
  });
  let waited = 0;
  t.mock.timers.tick(0);
  while (calls === 0 && waited < 120000) {
    t.mock.timers.tick(1);
    waited += 1;
  }
  assert.equal(calls, 1, `${hook.name} must call done once`);
  return waited;
}

function response(statusCode, body = '', headers = {}) {
  return { statusCode, headers, body: typeof body === 'string' ? body : JSON.stringify(body) };
}

function problem(code, extra = {}) {
  return { type: 'about:blank', title: code, status: 409, detail: code, code, ...extra };
}

function created(id, replayed = false) {
  const headers = replayed ? { 'idempotent-replayed': 'true' } : {};
  return response(201, { booking: { id, status: 'confirmed' }, capacity: {} }, headers);
}

// The mode each phase of the scenario files selects.
const MODE_OF = {
  'warm-up': 'spread',
  ramp: 'spread',
  contention: 'contention',
  duplicates: 'duplicates',
  spread: 'spread',
  'rate-limit probe (opt-in)': 'probe'
};

// A diner as startDiner leaves it, in the phase named (one fresh events recorder per diner). A
// processor reads its timeline once, so all diners of one processor are in its first phase.
function diner(proc, phaseName, vars = {}) {
  const context = { vars: { $scenarioFile: scenarioFor(phaseName), ...vars }, scenario: { name: 'diner' } };
  const events = recorder();
  now(proc.startDiner, context, events);
  assert.equal(context.vars.mode, MODE_OF[phaseName], `a diner in ${phaseName}`);
  return { context, events };
}

// nextBooking then prepareBooking: the request the diner sends.
function book(proc, d) {
  now(proc.nextBooking, d.context, d.events);
  const request = { url: '/bookings', headers: { accept: 'application/json' } };
  now(proc.prepareBooking, request, d.context, d.events);
  return request;
}

function outcome(proc, d, res) {
  return now(proc.recordOutcome, {}, res, d.context, d.events);
}

// Math.random() returning these values in turn (the last one from then on).
function randomSequence(t, ...values) {
  let i = 0;
  t.mock.method(Math, 'random', () => values[Math.min(i++, values.length - 1)]);
}

function contract() {
  return JSON.parse(fs.readFileSync(OPENAPI, 'utf8')).components.schemas;
}

// ------------------------------------------------------------------------------- headers

describe('request headers', () => {
  test('availability requests carry the service key and X-Run-Id and keep their own headers', (t) => {
    const proc = withPlan(t, PLAN, { LOAD_TEST_SERVICE_KEY: 'svc-key-1' });
    const d = diner(proc, 'warm-up');
    const request = { url: '/restaurants/x/availability', headers: { accept: 'application/json' } };
    now(proc.prepareAvailability, request, d.context, d.events);
    assert.deepEqual(request.headers, {
      accept: 'application/json',
      'x-api-key': 'svc-key-1',
      'X-Run-Id': 'run-unit-7'
    });
  });

  test('every booking request has its own Idempotency-Key, the run id and the chosen body', (t) => {
    const keys = new Set();
    let count = 0;
    for (const phase of ['warm-up', 'contention', 'duplicates', 'rate-limit probe (opt-in)']) {
      const proc = withPlan(t, PLAN, { LOAD_TEST_SERVICE_KEY: 'svc-key-1' });
      const d = diner(proc, phase);
      for (let i = 0; i < 25; i += 1) {
        const request = book(proc, d);
        const key = request.headers['Idempotency-Key'];
        if (d.context.vars.resend !== true && phase === 'duplicates') {
          continue; // resending another diner's request: its key (checked under duplicates)
        }
        assert.match(key, /^lt-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
        keys.add(key);
        count += 1;
        assert.equal(request.headers['X-Run-Id'], 'run-unit-7');
        assert.equal(request.headers['x-api-key'], 'svc-key-1');
        assert.equal(request.headers.accept, 'application/json');
        assert.deepEqual(request.json, d.context.vars.body);
      }
    }
    assert.ok(count >= 75, `only ${count} keys checked`);
    assert.equal(keys.size, count, 'a key was reused');
  });
});

// ---------------------------------------------------------------------------- the body

describe('booking body', () => {
  test("has the contract's required fields and nothing outside BookingRequest; source is load-test", (t) => {
    const proc = withPlan(t);
    const schemas = contract();
    const request = schemas.BookingRequest;
    for (let i = 0; i < 50; i += 1) {
      const body = proc._internals.bookingBody(HOT_R, '2031-03-10', '19:15');
      assert.deepEqual(Object.keys(body).filter((k) => !(k in request.properties)), [], 'unknown field');
      assert.deepEqual(request.required.filter((k) => !(k in body)), [], 'missing field');
      assert.equal(body.restaurantId, HOT_R);
      assert.equal(body.date, '2031-03-10');
      assert.equal(body.time, '19:15');
      assert.equal(body.source, 'load-test');
      assert.match(body.source, new RegExp(request.properties.source.pattern));
      assert.ok(Number.isInteger(body.partySize), 'partySize is an integer');
      assert.ok(body.partySize >= request.properties.partySize.minimum);
      assert.ok(body.partySize <= request.properties.partySize.maximum);
      // A synthetic guest: a name only, no contact details.
      assert.deepEqual(Object.keys(body.guest), ['name']);
      assert.deepEqual(schemas.Guest.required.filter((k) => !(k in body.guest)), []);
      assert.ok(body.guest.name.length >= 1 && body.guest.name.length <= 200);
      assert.equal(typeof body.notes, 'string');
      assert.ok(body.notes.length <= 1000);
    }
  });

  test('partySize runs from 1 to the plan maxPartySize, 4 when the plan has none', (t) => {
    const sizes = (proc) => {
      const seen = [];
      for (const r of [0, 0.3, 0.6, 0.999999]) {
        t.mock.method(Math, 'random', () => r);
        seen.push(proc._internals.bookingBody(HOT_R, '2031-03-10', '19:00').partySize);
        Math.random.mock.restore();
      }
      return seen;
    };
    assert.deepEqual(sizes(withPlan(t, { ...PLAN, maxPartySize: 2 })), [1, 1, 2, 2]);
    assert.deepEqual(sizes(withPlan(t, { ...PLAN, maxPartySize: undefined })), [1, 2, 3, 4]);
    assert.deepEqual(sizes(withPlan(t, { ...PLAN, maxPartySize: 0 })), [1, 2, 3, 4]);
    assert.deepEqual(sizes(fresh(t, { LOAD_TEST_RESTAURANT_ID: HOT_R, LOAD_TEST_MAX_PARTY: '3' })), [1, 1, 2, 3]);
    assert.deepEqual(sizes(fresh(t, { LOAD_TEST_RESTAURANT_ID: HOT_R, LOAD_TEST_MAX_PARTY: 'many' })), [1, 2, 3, 4]);
  });
});

// ------------------------------------------------------------------------ recordOutcome

describe('recordOutcome counters', () => {
  function booked(t, phase = 'warm-up') {
    const proc = withPlan(t);
    const d = diner(proc, phase);
    book(proc, d);
    d.context.vars.body.partySize = 3;
    d.events.emitted.length = 0;
    return { proc, d };
  }

  test('a 201 that created a booking counts the booking and its covers', (t) => {
    const { proc, d } = booked(t);
    outcome(proc, d, created('b-1'));
    assert.deepEqual(d.events.counters(), {
      'load.requests.spread': 1,
      'bookings.created': 1,
      'bookings.created_covers': 3
    });
  });

  test('a 201 for a key already answered 201 (any case of Idempotent-Replayed) is a replay, not a booking', (t) => {
    for (const flag of ['true', 'True', 'TRUE']) {
      const { proc, d } = booked(t, 'duplicates');
      outcome(proc, d, created('b-1'));
      d.events.emitted.length = 0;
      outcome(proc, d, response(201, { booking: { id: 'b-1' } }, { 'idempotent-replayed': flag }));
      assert.deepEqual(d.events.counters(), {
        'load.requests.duplicates': 1,
        'bookings.replayed': 1,
        'bookings.replayed_201': 1
      });
    }
    const { proc, d } = booked(t, 'duplicates');
    outcome(proc, d, response(201, { booking: { id: 'b-1' } }, { 'idempotent-replayed': 'false' }));
    assert.equal(d.events.counters()['bookings.created'], 1);
  });

  test('the first 201 of a key is the booking acknowledged, even replayed after a lost answer', (t) => {
    const { proc, d } = booked(t, 'duplicates');
    outcome(proc, d, created('b-1', true));
    assert.deepEqual(d.events.counters(), {
      'load.requests.duplicates': 1,
      'bookings.replayed': 1,
      'bookings.created': 1,
      'bookings.created_covers': 3,
      'bookings.recovered': 1
    });
    assert.equal(d.context.vars.bookingId, 'b-1', 'the diner may cancel it');
    // the original answer arriving after the replay is the same booking again
    outcome(proc, d, created('b-1'));
    assert.equal(d.events.counters()['bookings.replayed_201'], 1);
    assert.equal(d.events.counters()['bookings.created'], 1);
  });

  test('409s count by problem code; a replayed 409 is also a replay', (t) => {
    const cases = [
      [response(409, problem('capacity_exceeded')), { 'bookings.refused.capacity_exceeded': 1 }],
      [response(409, problem('slot_closed')), { 'bookings.refused.slot_closed': 1 }],
      [
        response(409, problem('idempotency_in_progress'), { 'retry-after': '1' }),
        { 'bookings.refused.idempotency_in_progress': 1 }
      ],
      [
        response(409, problem('capacity_exceeded'), { 'idempotent-replayed': 'true' }),
        { 'bookings.refused.capacity_exceeded': 1, 'bookings.replayed': 1, 'bookings.replayed_409': 1 }
      ],
      [response(409, '<html>conflict</html>'), { 'bookings.refused.unknown': 1 }],
      [response(409, { title: 'no code' }), { 'bookings.refused.unknown': 1 }]
    ];
    for (const [res, expected] of cases) {
      const { proc, d } = booked(t);
      outcome(proc, d, res);
      assert.deepEqual(d.events.counters(), { 'load.requests.spread': 1, ...expected }, res.body);
    }
  });

  test('a 429 counts as rate limited, nothing else', (t) => {
    const { proc, d } = booked(t);
    waitOf(t, proc.recordOutcome, {}, response(429, problem('rate_limited')), d.context, d.events);
    assert.deepEqual(d.events.counters(), { 'load.requests.spread': 1, 'bookings.rate_limited': 1 });
  });

  test('5xx and any other status are unexpected, logged with status and problem code only', (t) => {
    const log = t.mock.method(console, 'error', () => {});
    const cases = [
      [500, problem('internal_error'), 'unexpected response 500 internal_error for POST /bookings'],
      [502, '<html>Bad Gateway</html>', 'unexpected response 502  for POST /bookings'],
      [503, problem('service_unavailable'), 'unexpected response 503 service_unavailable for POST /bookings'],
      [504, '', 'unexpected response 504  for POST /bookings'],
      [422, problem('validation_error'), 'unexpected response 422 validation_error for POST /bookings'],
      [200, { booking: { id: 'b-1' } }, 'unexpected response 200  for POST /bookings']
    ];
    for (const [status, body, line] of cases) {
      const { proc, d } = booked(t);
      log.mock.resetCalls();
      // A 503's Retry-After does not hold the diner: only 429s pause it.
      outcome(proc, d, response(status, body, { 'retry-after': '3' }));
      assert.deepEqual(d.events.counters(), { 'load.requests.spread': 1, 'bookings.unexpected': 1 }, String(status));
      assert.deepEqual(log.mock.calls.map((c) => c.arguments), [[line]]);
    }
  });

  test('a replay answering with another booking id than the original is counted as a mismatch', (t) => {
    const proc = withPlan(t);
    randomSequence(t, 0.5); // every booking its own (no resend of a pooled request)
    const d = diner(proc, 'duplicates');
    book(proc, d);
    outcome(proc, d, created('b-original'));
    outcome(proc, d, created('b-original', true));
    assert.equal(d.events.counters()['bookings.replay_mismatch'], undefined, 'same booking is no mismatch');
    outcome(proc, d, created('b-someone-else', true));
    assert.equal(d.events.counters()['bookings.replay_mismatch'], 1);
    // A replay of a key whose creating 201 this worker never saw is that key's acknowledgement.
    book(proc, d);
    outcome(proc, d, created('b-unknown', true));
    assert.equal(d.events.counters()['bookings.replay_mismatch'], 1);
    assert.equal(d.events.counters()['bookings.replayed_201'], 2);
    assert.equal(d.events.counters()['bookings.created'], 2);
  });

  test('the created-booking memory keeps the last 5000 keys', (t) => {
    const proc = withPlan(t);
    const d = diner(proc, 'spread');
    const keys = [];
    for (let i = 0; i <= 5000; i += 1) {
      keys.push(book(proc, d).headers['Idempotency-Key']);
      outcome(proc, d, created(`b-${i}`));
    }
    d.events.emitted.length = 0;
    d.context.vars.key = keys[0];
    outcome(proc, d, created('b-other', true));
    assert.equal(d.events.counters()['bookings.replay_mismatch'], undefined, 'the oldest key is forgotten');
    assert.equal(d.events.counters()['bookings.created'], 1, 'so its replay reads as its first answer');
    // remembering it again forgot the next oldest; the one after is still known
    d.context.vars.key = keys[2];
    outcome(proc, d, created('b-other', true));
    assert.equal(d.events.counters()['bookings.replay_mismatch'], 1);
  });
});

// ------------------------------------------------------------------------- contention

describe('contention', () => {
  test('a contention (or probe) diner books the hot slots on the first hot evening', (t) => {
    for (const phase of ['contention', 'rate-limit probe (opt-in)']) {
      const proc = withPlan(t);
      const d = diner(proc, phase);
      const times = new Set();
      for (let i = 0; i < 60; i += 1) {
        const { json } = book(proc, d);
        assert.equal(json.restaurantId, HOT_R, phase);
        assert.equal(json.date, HOT_DATES[0], phase);
        times.add(json.time);
      }
      assert.deepEqual([...times].sort(), HOT_TIMES, phase);
    }
  });

  test('a 409 full slot with alternatives: the next booking takes one, on the refused restaurant, once', (t) => {
    for (const code of ['capacity_exceeded', 'slot_closed']) {
      const proc = withPlan(t);
      randomSequence(t, 0);
      const d = diner(proc, 'contention');
      assert.equal(d.context.vars.restaurantId, OTHER_R, 'the diner sits on another restaurant');
      const refused = book(proc, d).json;
      const alternatives = [
        { date: HOT_DATES[2], time: '20:00', remainingCovers: 4 },
        { date: HOT_DATES[2], time: '20:15', remainingCovers: 2 }
      ];
      outcome(proc, d, response(409, problem(code, { alternatives })));
      const next = book(proc, d).json;
      // On the refused request's restaurant, at the alternative's date and time (the first one:
      // Math.random() is 0 here).
      assert.equal(refused.restaurantId, HOT_R);
      assert.deepEqual(
        { restaurantId: next.restaurantId, date: next.date, time: next.time },
        { restaurantId: HOT_R, date: HOT_DATES[2], time: '20:00' }
      );
      assert.equal(d.events.counters()['bookings.alternative_taken'], 1);
      const later = book(proc, d).json;
      assert.ok(HOT_TIMES.includes(later.time), 'the alternative is used once');
      assert.equal(later.date, HOT_DATES[0]);
      assert.equal(d.events.counters()['bookings.alternative_taken'], 1);
      Math.random.mock.restore();
    }
  });

  test('a suggested alternative is one of the first three, never a later one', (t) => {
    // processor.js picks at random among the first three (its header comment says "the first").
    const proc = withPlan(t);
    const d = diner(proc, 'contention');
    const alternatives = ['20:00', '20:15', '20:30', '20:45', '21:00'].map((time) => ({
      date: HOT_DATES[1],
      time,
      remainingCovers: 2
    }));
    const taken = new Set();
    for (const r of [0, 0.34, 0.67, 0.999999]) {
      book(proc, d);
      t.mock.method(Math, 'random', () => r);
      outcome(proc, d, response(409, problem('capacity_exceeded', { alternatives })));
      Math.random.mock.restore();
      const { json } = book(proc, d);
      assert.equal(json.date, HOT_DATES[1]);
      taken.add(json.time);
    }
    assert.deepEqual([...taken].sort(), ['20:00', '20:15', '20:30']);
  });

  test('a 409 full slot without alternatives: the diner tries the next hot evening, round the plan', (t) => {
    const proc = withPlan(t);
    const d = diner(proc, 'contention');
    const dates = [book(proc, d).json.date];
    for (const alternatives of [[], null, undefined, []]) {
      outcome(proc, d, response(409, problem('capacity_exceeded', { alternatives })));
      const { json } = book(proc, d);
      assert.equal(json.restaurantId, HOT_R);
      assert.ok(HOT_TIMES.includes(json.time));
      dates.push(json.date);
    }
    assert.deepEqual(dates, [...HOT_DATES, HOT_DATES[0], HOT_DATES[1]]);
    assert.equal(d.events.counters()['bookings.alternative_taken'], undefined);
  });

  test('without hotDates in the plan a full evening keeps the hot slot date', (t) => {
    const proc = withPlan(t, { ...PLAN, hotDates: undefined });
    const d = diner(proc, 'contention');
    for (let i = 0; i < 3; i += 1) {
      assert.equal(book(proc, d).json.date, HOT_DATES[0]);
      outcome(proc, d, response(409, problem('capacity_exceeded', { alternatives: [] })));
    }
  });

  test('no alternative is taken for an in-flight key, a replayed refusal, another phase or a bad body', (t) => {
    const alternatives = [{ date: HOT_DATES[2], time: '21:30', remainingCovers: 6 }];
    const cases = [
      ['contention', response(409, problem('idempotency_in_progress', { alternatives }))],
      ['contention', response(409, problem('capacity_exceeded', { alternatives }), { 'idempotent-replayed': 'true' })],
      ['contention', response(409, '{"code": "capacity_exceeded", "alternatives": [')],
      ['contention', response(409, problem('capacity_exceeded', { alternatives: [null] }))],
      ['warm-up', response(409, problem('capacity_exceeded', { alternatives }))],
      ['duplicates', response(409, problem('capacity_exceeded', { alternatives }))]
    ];
    for (const [phase, res] of cases) {
      const proc = withPlan(t);
      const d = diner(proc, phase);
      book(proc, d);
      outcome(proc, d, res);
      const { json } = book(proc, d);
      assert.notEqual(json.time, '21:30', `${phase}: ${res.body}`);
      assert.equal(d.events.counters()['bookings.alternative_taken'], undefined);
      if (phase === 'contention') {
        assert.equal(json.date, HOT_DATES[0], 'still on the same evening');
      }
    }
  });
});

// ------------------------------------------------------------------------- duplicates

describe('duplicates', () => {
  test('a booking is resent with the same Idempotency-Key and body, then the next one is fresh', (t) => {
    const proc = withPlan(t);
    randomSequence(t, 0.5);
    const d = diner(proc, 'duplicates');
    const first = book(proc, d);
    assert.equal(proc.shouldResend(d.context.vars), true);
    now(proc.markResendIfDue, d.context, d.events);
    const resend = { url: '/bookings', headers: {} };
    now(proc.prepareBooking, resend, d.context, d.events);
    assert.equal(resend.headers['Idempotency-Key'], first.headers['Idempotency-Key']);
    assert.deepEqual(resend.json, first.json);
    assert.equal(resend.headers['X-Run-Id'], 'run-unit-7');
    outcome(proc, d, created('b-1'));
    outcome(proc, d, created('b-1', true));
    assert.deepEqual(d.events.counters(), {
      'load.diners.duplicates': 1,
      'bookings.duplicate_sent': 1,
      'load.requests.duplicates': 2,
      'bookings.created': 1,
      'bookings.created_covers': first.json.partySize,
      'bookings.replayed': 1,
      'bookings.replayed_201': 1
    });
    const next = book(proc, d);
    assert.notEqual(next.headers['Idempotency-Key'], first.headers['Idempotency-Key']);
  });

  test("some bookings resend another diner's request: its key and body, without a second resend", (t) => {
    const proc = withPlan(t);
    randomSequence(t, 0.5);
    const a = diner(proc, 'duplicates');
    const original = book(proc, a);
    Math.random.mock.restore();
    randomSequence(t, 0);
    const b = diner(proc, 'duplicates');
    const copy = book(proc, b);
    assert.equal(copy.headers['Idempotency-Key'], original.headers['Idempotency-Key']);
    assert.deepEqual(copy.json, original.json);
    assert.equal(proc.shouldResend(b.context.vars), false);
    now(proc.markResendIfDue, b.context, b.events);
    assert.deepEqual(b.events.counters(), { 'load.diners.duplicates': 1, 'bookings.duplicate_sent': 1 });
    // Other modes never reuse a key, whatever the dice say. (This processor's diners are all in
    // the duplicates phase; the hooks act on context.vars.mode, set here as startDiner would.)
    for (const mode of ['spread', 'contention', 'probe']) {
      const c = diner(proc, 'duplicates');
      c.context.vars.mode = mode;
      const own = book(proc, c);
      assert.notEqual(own.headers['Idempotency-Key'], original.headers['Idempotency-Key'], mode);
      assert.equal(proc.shouldResend(c.context.vars), false);
      now(proc.markResendIfDue, c.context, c.events);
      assert.equal(c.events.counters()['bookings.duplicate_sent'], undefined);
    }
  });

  test('the pool of requests to resend keeps the last 200', (t) => {
    for (const [count, expected] of [
      [200, 0],
      [201, 1]
    ]) {
      const proc = withPlan(t);
      randomSequence(t, 0.5);
      const a = diner(proc, 'duplicates');
      const keys = [];
      for (let i = 0; i < count; i += 1) {
        keys.push(book(proc, a).headers['Idempotency-Key']);
      }
      Math.random.mock.restore();
      randomSequence(t, 0);
      const b = diner(proc, 'duplicates');
      assert.equal(book(proc, b).headers['Idempotency-Key'], keys[expected], `after ${count} bookings`);
      Math.random.mock.restore();
    }
  });
});

// ------------------------------------------------------------------------ Retry-After

describe('Retry-After', () => {
  const cases = [
    [{ 'retry-after': '2' }, 2000],
    [{ 'retry-after': '1.5' }, 1500],
    [{}, 1000],
    [{ 'retry-after': '0' }, 200],
    [{ 'retry-after': '-3' }, 200],
    [{ 'retry-after': '5' }, 5000],
    [{ 'retry-after': '6' }, 5000],
    [{ 'retry-after': '3600' }, 5000]
  ];

  test('a 429 on a booking holds the diner for Retry-After, between 0.2 s and 5 s', (t) => {
    for (const [headers, ms] of cases) {
      const proc = withPlan(t);
      const d = diner(proc, 'warm-up');
      book(proc, d);
      const throttled = response(429, problem('rate_limited'), headers);
      const waited = waitOf(t, proc.recordOutcome, {}, throttled, d.context, d.events);
      assert.equal(waited, ms, JSON.stringify(headers));
    }
  });

  test('a 429 on availability counts availability.rate_limited and holds the diner the same way', (t) => {
    for (const [headers, ms] of cases) {
      const proc = withPlan(t);
      const d = diner(proc, 'contention');
      const throttled = response(429, problem('rate_limited'), headers);
      const waited = waitOf(t, proc.readAvailability, {}, throttled, d.context, d.events);
      assert.equal(waited, ms, JSON.stringify(headers));
      assert.deepEqual(d.events.counters(), { 'load.diners.contention': 1, 'availability.rate_limited': 1 });
    }
  });

  test('the probe does not wait on a 429', (t) => {
    const proc = withPlan(t);
    const d = diner(proc, 'rate-limit probe (opt-in)');
    book(proc, d);
    const throttled = response(429, problem('rate_limited'), { 'retry-after': '4' });
    now(proc.recordOutcome, {}, throttled, d.context, d.events);
    assert.ok(waitOf(t, proc.readAvailability, {}, throttled, d.context, d.events) <= 1);
    assert.equal(d.events.counters()['bookings.rate_limited'], 1);
    assert.equal(d.events.counters()['availability.rate_limited'], 1);
  });

  // RFC 9110 also allows Retry-After as an HTTP-date (the contract sends whole seconds).
  test('an HTTP-date Retry-After still pauses the diner, capped', (t) => {
    const proc = withPlan(t);
    const d = diner(proc, 'warm-up');
    book(proc, d);
    const res = response(429, problem('rate_limited'), { 'retry-after': 'Wed, 21 Oct 2099 07:28:00 GMT' });
    const waited = waitOf(t, proc.recordOutcome, {}, res, d.context, d.events);
    assert.ok(waited >= 200 && waited <= 5000, `waited ${waited} ms`);
  });
});

// ----------------------------------------------------------------- availability / spread

describe('availability and spread', () => {
  const slots = [
    { time: '18:00', remainingCovers: 0, maxCovers: 20 },
    { time: '18:15', remainingCovers: null, maxCovers: null },
    { time: '18:30', remainingCovers: 2, maxCovers: 20 },
    { time: '18:45', remainingCovers: -1, maxCovers: 20 }
  ];

  test('a spread diner books only the times availability showed with room, on its own restaurant and date', (t) => {
    const proc = withPlan(t);
    const d = diner(proc, 'ramp');
    now(proc.readAvailability, {}, response(200, { slots }), d.context, d.events);
    const times = new Set();
    for (let i = 0; i < 60; i += 1) {
      const { json } = book(proc, d);
      assert.equal(json.restaurantId, d.context.vars.restaurantId);
      assert.equal(json.date, d.context.vars.date);
      times.add(json.time);
    }
    assert.deepEqual([...times].sort(), ['18:15', '18:30']);
  });

  test('without a usable availability answer a spread diner books its open times', (t) => {
    for (const res of [
      response(200, 'not json'),
      response(200, { slots: [] }),
      response(200, {}),
      response(200, { slots: [{ time: '18:00', remainingCovers: 0 }] }),
      response(503, problem('service_unavailable'))
    ]) {
      const proc = withPlan(t, { ...PLAN, restaurants: [PLAN.restaurants[0]] });
      const d = diner(proc, 'spread');
      now(proc.readAvailability, {}, res, d.context, d.events);
      const times = new Set();
      for (let i = 0; i < 40; i += 1) {
        const { json } = book(proc, d);
        assert.equal(json.restaurantId, OTHER_R);
        assert.equal(json.date, '2031-03-11');
        times.add(json.time);
      }
      assert.deepEqual([...times].sort(), ['18:00', '18:15', '18:30'], res.body);
    }
  });
});

// ---------------------------------------------------------------------- diner lifecycle

describe('diner lifecycle', () => {
  test("startDiner sets up the diner from the plan and counts it under its phase's mode", (t) => {
    const proc = withPlan(t, PLAN, { LOAD_TEST_SERVICE_KEY: 'svc-key-1' });
    randomSequence(t, 0.99);
    const d = diner(proc, 'warm-up', { bookingsPerDiner: 2 });
    const v = d.context.vars;
    assert.deepEqual(
      {
        runId: v.runId,
        apiKey: v.apiKey,
        restaurantId: v.restaurantId,
        date: v.date,
        mode: v.mode,
        openTimes: v.openTimes,
        roomyTimes: v.roomyTimes,
        alternative: v.alternative,
        hotDateIndex: v.hotDateIndex,
        bookingsLeft: v.bookingsLeft
      },
      {
        runId: 'run-unit-7',
        apiKey: 'svc-key-1',
        restaurantId: HOT_R,
        date: '2031-03-10',
        mode: 'spread',
        openTimes: PLAN.restaurants[1].times,
        roomyTimes: null,
        alternative: null,
        hotDateIndex: 0,
        bookingsLeft: 2
      }
    );
    assert.deepEqual(d.events.counters(), { 'load.diners.spread': 1 });
  });

  test('a diner books bookingsPerDiner times (6 by default, 20 in the probe), then keepBooking stops', (t) => {
    for (const [phase, vars, expected] of [
      ['warm-up', { bookingsPerDiner: 2 }, 2],
      ['contention', { bookingsPerDiner: '3' }, 3],
      ['spread', {}, 6],
      ['spread', { bookingsPerDiner: 'lots' }, 6],
      ['rate-limit probe (opt-in)', { bookingsPerDiner: 2 }, 20]
    ]) {
      const proc = withPlan(t);
      const d = diner(proc, phase, vars);
      let made = 0;
      while (now(proc.keepBooking, d.context)[0] === true) {
        book(proc, d);
        made += 1;
        assert.ok(made <= 50, 'keepBooking never stops');
      }
      assert.equal(made, expected, `${phase} ${JSON.stringify(vars)}`);
      assert.deepEqual(now(proc.keepBooking, d.context), [false]);
    }
  });

  test('the in-flight histogram follows diners starting and ending', (t) => {
    const proc = withPlan(t);
    const events = recorder();
    const ctx = () => ({ vars: { $scenarioFile: scenarioFor('warm-up') } });
    now(proc.startDiner, ctx(), events);
    now(proc.startDiner, ctx(), events);
    now(proc.endDiner, ctx(), events);
    now(proc.endDiner, ctx(), events);
    now(proc.startDiner, ctx(), events);
    const inFlight = events.emitted.filter(([type]) => type === 'histogram');
    assert.deepEqual(inFlight, [
      ['histogram', 'load.vusers_in_flight', 1],
      ['histogram', 'load.vusers_in_flight', 2],
      ['histogram', 'load.vusers_in_flight', 1]
    ]);
  });

  test('shouldResend and markResendIfDue act only on a resend flagged true', (t) => {
    const proc = withPlan(t);
    for (const resend of [false, undefined, 'true', 1, null]) {
      assert.equal(proc.shouldResend({ resend }), false, String(resend));
    }
    // (markResendIfDue tests truthiness, shouldResend `=== true`; nextBooking only sets booleans.)
    for (const resend of [false, undefined, null]) {
      const events = recorder();
      now(proc.markResendIfDue, { vars: { resend } }, events);
      assert.deepEqual(events.emitted, [], String(resend));
    }
    assert.equal(proc.shouldResend({ resend: true }), true);
    const events = recorder();
    now(proc.markResendIfDue, { vars: { resend: true } }, events);
    assert.deepEqual(events.emitted, [['counter', 'bookings.duplicate_sent', 1]]);
  });

  test('pace lets the diner go on in every phase', async (t) => {
    const vars = { thinkMinMs: 0, thinkMaxMs: 2, contentionTickMs: 2 };
    for (const phase of ['rate-limit probe (opt-in)', 'warm-up', 'contention', 'duplicates', 'spread']) {
      const proc = withPlan(t);
      const d = diner(proc, phase, vars);
      const calls = await new Promise((resolve) => {
        let n = 0;
        proc.pace(d.context, d.events, () => {
          n += 1;
          setTimeout(() => resolve(n), 20);
        });
        setTimeout(() => resolve(n), 2000);
      });
      assert.equal(calls, 1, phase);
    }
  });
});

// ------------------------------------------------------------------------ plan from env

describe('plan from the environment', () => {
  test('restaurant ids, date, times, run id and hot slots come from LOAD_TEST_*', (t) => {
    const proc = fresh(t, {
      LOAD_TEST_RESTAURANT_ID: ` ${HOT_R} , ${OTHER_R} ,`,
      LOAD_TEST_DATE: '2031-05-01',
      LOAD_TEST_TIMES: '18:45, 19:00,19:15 ,19:30,19:45',
      LOAD_TEST_RUN_ID: 'run-env-3'
    });
    const restaurants = [];
    for (const r of [0, 0.99]) {
      t.mock.method(Math, 'random', () => r);
      const d = diner(proc, 'contention');
      Math.random.mock.restore();
      restaurants.push(d.context.vars.restaurantId);
      assert.equal(d.context.vars.date, '2031-05-01');
      assert.deepEqual(d.context.vars.openTimes, ['18:45', '19:00', '19:15', '19:30', '19:45']);
      assert.equal(d.context.vars.runId, 'run-env-3');
      assert.equal(d.context.vars.apiKey, '');
      const times = new Set();
      for (let i = 0; i < 60; i += 1) {
        const request = book(proc, d);
        assert.equal(request.headers['X-Run-Id'], 'run-env-3');
        // Hot slots: the first restaurant's 19:00-19:30, on the test date.
        assert.equal(request.json.restaurantId, HOT_R);
        assert.equal(request.json.date, '2031-05-01');
        times.add(request.json.time);
      }
      assert.deepEqual([...times].sort(), HOT_TIMES);
    }
    assert.deepEqual(restaurants, [HOT_R, OTHER_R]);
  });

  test('defaults: 17:00-21:45 every 15 min, 45 days ahead, an adhoc run id', (t) => {
    const proc = fresh(t, { LOAD_TEST_RESTAURANT_ID: HOT_R });
    const expectedDate = new Date(Date.now() + 45 * 86400 * 1000).toISOString().slice(0, 10);
    const d = diner(proc, 'warm-up');
    const times = d.context.vars.openTimes;
    assert.equal(times.length, 20);
    assert.equal(times[0], '17:00');
    assert.equal(times[1], '17:15');
    assert.equal(times[19], '21:45');
    assert.ok(times.every((time) => /^([01][0-9]|2[0-3]):[0-5][0-9]$/.test(time)));
    assert.equal(d.context.vars.date, expectedDate);
    assert.match(d.context.vars.runId, /^adhoc-\d+$/);
    // The plan is read once per worker: later changes to the environment do not move it.
    process.env.LOAD_TEST_RUN_ID = 'changed';
    assert.equal(diner(proc, 'warm-up').context.vars.runId, d.context.vars.runId);
  });

  test('without 19:00-19:30 among the times the hot slots are the first three', (t) => {
    const proc = fresh(t, { LOAD_TEST_RESTAURANT_ID: HOT_R, LOAD_TEST_TIMES: '12:00,12:15,12:30,12:45' });
    const d = diner(proc, 'contention');
    const times = new Set();
    for (let i = 0; i < 60; i += 1) {
      times.add(book(proc, d).json.time);
    }
    assert.deepEqual([...times].sort(), ['12:00', '12:15', '12:30']);
  });

  test('no restaurant id: the first diner fails with a clear message', (t) => {
    for (const env of [{}, { LOAD_TEST_RESTAURANT_ID: ' , ' }]) {
      const proc = fresh(t, env);
      const context = { vars: { $scenarioFile: scenarioFor('warm-up') } };
      assert.throws(() => proc.startDiner(context, recorder(), () => {}), /LOAD_TEST_RESTAURANT_ID is not set/);
    }
  });

  test('a trailing comma in LOAD_TEST_TIMES adds no empty time', (t) => {
    const proc = fresh(t, { LOAD_TEST_RESTAURANT_ID: HOT_R, LOAD_TEST_TIMES: '18:00,18:15,' });
    const d = diner(proc, 'warm-up');
    assert.deepEqual(d.context.vars.openTimes, ['18:00', '18:15']);
  });
});

// ---------------------------------------------------------------- phases and their modes

describe('phases', () => {
  test('the scenario files map their phases to modes on a cumulative timeline', (t) => {
    const expected = {
      [LOAD_SCENARIO]: [
        ['warm-up', 'spread'],
        ['ramp', 'spread'],
        ['contention', 'contention'],
        ['duplicates', 'duplicates'],
        ['spread', 'spread'],
        ['rate-limit probe (opt-in)', 'probe']
      ],
      [SMOKE_SCENARIO]: [
        ['warm-up', 'spread'],
        ['contention', 'contention'],
        ['duplicates', 'duplicates'],
        ['spread', 'spread'],
        ['rate-limit probe (opt-in)', 'probe']
      ]
    };
    for (const [file, phases] of Object.entries(expected)) {
      for (const probeSeconds of [undefined, '30']) {
        const env = probeSeconds ? { LOAD_TEST_PROBE_SECONDS: probeSeconds } : {};
        const schedule = fresh(t, env)._internals.loadSchedule(file);
        assert.deepEqual(
          schedule.map((p) => [p.name, p.mode]),
          phases,
          file
        );
        let endsAt = 0;
        for (const phase of schedule) {
          assert.ok(Number.isFinite(phase.seconds) && phase.seconds >= 0, phase.name);
          endsAt += phase.seconds * 1000;
          assert.equal(phase.endsAt, endsAt, phase.name);
        }
        assert.ok(schedule[0].seconds > 0);
        // The opt-in probe lasts LOAD_TEST_PROBE_SECONDS, nothing when it is unset.
        assert.equal(schedule.at(-1).seconds, probeSeconds ? 30 : 0);
      }
    }
  });

  test('every phase name selects its mode', (t) => {
    const names = [
      ['warm-up', 'spread'],
      ['Warm up', 'spread'],
      ['ramp to peak', 'spread'],
      ['CONTENTION', 'contention'],
      ['duplicate sends', 'duplicates'],
      ['spread', 'spread'],
      ['rate-limit probe (opt-in)', 'probe'],
      ['something else', 'spread'],
      [undefined, 'spread']
    ];
    for (const [name, mode] of names) {
      const proc = withPlan(t);
      const file = scenario([{ name, duration: 3600, arrivalRate: 1 }]);
      const events = recorder();
      now(proc.startDiner, { vars: { $scenarioFile: file } }, events);
      assert.deepEqual(events.counters(), { [`load.diners.${mode}`]: 1 }, String(name));
    }
  });

  test('a diner gets the phase running now, or after the timeline the last phase that ran', async (t) => {
    const cases = [
      [
        [
          { name: 'warm-up', duration: 0.002 },
          { name: 'contention', duration: 3600 },
          { name: 'spread', duration: 3600 }
        ],
        'contention'
      ],
      [
        [
          { pause: 0.001 },
          { name: 'duplicates', duration: '{{ $env.LOAD_TEST_DUP_S }}' },
          { name: 'spread', duration: 3600 }
        ],
        'duplicates',
        { LOAD_TEST_DUP_S: '3600' }
      ],
      [
        [
          { name: 'duplicates', duration: '{{ $env.LOAD_TEST_DUP_S }}' },
          { name: 'contention', duration: 3600 }
        ],
        'contention'
      ],
      [
        [
          { name: 'warm-up', duration: 0.001 },
          { name: 'duplicates', duration: 0.002 },
          { name: 'rate-limit probe (opt-in)', duration: '{{ $env.LOAD_TEST_PROBE_SECONDS }}' }
        ],
        'duplicates'
      ],
      [[], 'spread']
    ];
    for (const [phases, mode, env] of cases) {
      const proc = withPlan(t, PLAN, env);
      const file = scenario(phases);
      await new Promise((resolve) => setTimeout(resolve, 25));
      const events = recorder();
      now(proc.startDiner, { vars: { $scenarioFile: file } }, events);
      assert.deepEqual(events.counters(), { [`load.diners.${mode}`]: 1 }, JSON.stringify(phases));
    }
  });

  test('an unreadable scenario file is reported once and every diner spreads', (t) => {
    const log = t.mock.method(console, 'error', () => {});
    const proc = withPlan(t);
    const missing = path.join(tmp, 'no-such-scenario.yml');
    assert.deepEqual(proc._internals.loadSchedule(missing), []);
    assert.equal(log.mock.callCount(), 1);
    assert.match(log.mock.calls[0].arguments[0], /^processor: cannot read the phases of .*no-such-scenario\.yml: /);
    // The timeline is read once per worker.
    assert.deepEqual(proc._internals.loadSchedule(scenarioFor('contention')), []);
    const events = recorder();
    now(proc.startDiner, { vars: { $scenarioFile: missing } }, events);
    assert.deepEqual(events.counters(), { 'load.diners.spread': 1 });
    assert.equal(log.mock.callCount(), 1);
    const broken = withPlan(t)._internals.loadSchedule(tempFile('broken.yml', 'config: [unclosed'));
    assert.deepEqual(broken, []);
  });

  test('resolveEnv fills {{ $env.NAME }} from the environment, 0 when unset, and leaves the rest', (t) => {
    const { resolveEnv } = fresh(t, { LOAD_TEST_A: '12', LOAD_TEST_B: '3', LOAD_TEST_EMPTY: '' })._internals;
    assert.equal(resolveEnv('{{ $env.LOAD_TEST_A }}'), '12');
    assert.equal(resolveEnv('{{$env.LOAD_TEST_A}}'), '12');
    assert.equal(resolveEnv('{{   $env.LOAD_TEST_A   }}'), '12');
    assert.equal(resolveEnv('{{ $env.LOAD_TEST_UNSET }}'), '0');
    assert.equal(resolveEnv('{{ $env.LOAD_TEST_EMPTY }}'), '0');
    assert.equal(resolveEnv('{{ $env.LOAD_TEST_A }}{{ $env.LOAD_TEST_B }}'), '123');
    assert.equal(resolveEnv('x-{{ $env.LOAD_TEST_B }}-y'), 'x-3-y');
    assert.equal(resolveEnv('{{ target }}'), '{{ target }}');
    assert.equal(resolveEnv('{{ $processEnvironment.LOAD_TEST_A }}'), '{{ $processEnvironment.LOAD_TEST_A }}');
    assert.equal(resolveEnv(''), '');
    assert.equal(resolveEnv('15'), '15');
    assert.equal(resolveEnv(15), 15);
    assert.equal(resolveEnv(undefined), undefined);
    assert.equal(resolveEnv(null), null);
    const obj = { a: '{{ $env.LOAD_TEST_A }}' };
    assert.equal(resolveEnv(obj), obj);
  });
});

// ----------------------------------------------------------------------- personal data

describe('personal data', () => {
  test('nothing a diner emits or logs carries guest data, even when responses echo it', (t) => {
    const logged = [];
    for (const method of ['log', 'info', 'warn', 'error', 'debug']) {
      t.mock.method(console, method, (...args) => logged.push(args));
    }
    const guest = { name: 'Jane Realperson', email: 'jane.realperson@example.com', phone: '+44 20 7946 0958' };
    const echo = { booking: { id: 'b-1', guest }, capacity: {} };
    const responses = [
      response(201, echo),
      response(201, echo, { 'idempotent-replayed': 'true' }),
      response(409, problem('capacity_exceeded', { detail: `no room for ${guest.name}`, alternatives: [] })),
      response(409, problem('idempotency_in_progress', { detail: guest.email })),
      response(500, { code: 'internal_error', detail: `failed for ${guest.email} ${guest.phone}`, guest }),
      response(422, { code: 'validation_error', errors: [{ field: 'guest.email', input: guest.email }] }),
      response(400, `malformed: ${JSON.stringify(guest)}`),
      response(429, problem('rate_limited', { detail: guest.name }), { 'retry-after': '1' })
    ];
    const emitted = [];
    for (const phase of ['warm-up', 'contention', 'duplicates', 'rate-limit probe (opt-in)']) {
      const proc = withPlan(t);
      const d = diner(proc, phase);
      now(proc.prepareAvailability, { headers: {} }, d.context, d.events);
      const availability = response(200, { slots: [{ time: '18:00', remainingCovers: 3 }], guest });
      now(proc.readAvailability, {}, availability, d.context, d.events);
      for (const res of responses) {
        book(proc, d);
        waitOf(t, proc.recordOutcome, {}, res, d.context, d.events);
        now(proc.markResendIfDue, d.context, d.events);
        waitOf(t, proc.pace, d.context, d.events);
      }
      now(proc.endDiner, d.context, d.events);
      emitted.push(...d.events.emitted);
    }
    const all = JSON.stringify({ emitted, logged });
    assert.ok(emitted.some(([, name]) => name === 'bookings.created'), 'the diners did book');
    assert.ok(logged.length > 0, 'the unexpected answers were logged');
    const secrets = ['Jane', 'Realperson', 'example.com', '7946', 'Load Test Diner', 'synthetic load-test booking'];
    for (const secret of secrets) {
      assert.ok(!all.includes(secret), `${secret} reached a counter or the log`);
    }
  });
});

// ----------------------------------------------------------------- retries and the history

// The processor's requests answered by `replies` in turn (a Response, or an Error to throw),
// without waiting; returns what was sent and how long each wait before a resend was.
function fakeNetwork(proc, replies) {
  const sent = [];
  const waits = [];
  let i = 0;
  proc._internals.setFetch(async (url, init) => {
    sent.push({ url, method: init.method, headers: { ...init.headers }, body: init.body });
    const reply = replies[Math.min(i++, replies.length - 1)];
    if (reply instanceof Error) {
      throw reply;
    }
    return reply.clone(); // the same reply may answer again

  });
  proc._internals.setSleep(async (ms) => {
    waits.push(ms);
  });
  return { sent, waits };
}

function answer(status, body = {}, headers = {}) {
  return new Response(typeof body === 'string' ? body : JSON.stringify(body), { status, headers });
}

function timeoutError() {
  const err = new Error('The operation was aborted due to timeout');
  err.name = 'TimeoutError';
  return err;
}

function refused() {
  const err = new TypeError('fetch failed');
  err.cause = { code: 'ECONNREFUSED' };
  return err;
}

function run(hook, context, events) {
  return new Promise((resolve, reject) => hook(context, events, (err) => (err ? reject(err) : resolve())));
}

function historyOf(file) {
  return fs.existsSync(file)
    ? fs
        .readFileSync(file, 'utf8')
        .trim()
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line))
    : [];
}

const BOOKED = { booking: { id: 'b-1', status: 'confirmed' }, capacity: {} };

describe('a client that retries', () => {
  function setUp(t, phase = 'warm-up') {
    const history = path.join(tmp, `history-${(files += 1)}.jsonl`);
    const proc = withPlan(t, PLAN, { LOAD_TEST_HISTORY: history, LOAD_TEST_BASE_URL: 'http://127.0.0.1:9' });
    randomSequence(t, 0.5);
    const d = diner(proc, phase);
    now(proc.nextBooking, d.context, d.events);
    d.events.emitted.length = 0;
    return { proc, d, history };
  }

  test('a 503 is resent with the same key and body after Retry-After; the 201 is the one answer', async (t) => {
    const { proc, d, history } = setUp(t);
    const net = fakeNetwork(proc, [
      answer(503, problem('service_unavailable', { status: 503 }), { 'retry-after': '2' }),
      answer(201, BOOKED)
    ]);
    await run(proc.sendBooking, d.context, d.events);

    assert.equal(net.sent.length, 2);
    assert.equal(net.sent[0].url, 'http://127.0.0.1:9/bookings');
    assert.equal(net.sent[0].headers['Idempotency-Key'], net.sent[1].headers['Idempotency-Key']);
    assert.equal(net.sent[0].body, net.sent[1].body);
    assert.deepEqual(net.waits, [2000]);
    const c = d.events.counters();
    assert.equal(c['http.requests'], 2);
    assert.equal(c['http.codes.201'], 1);
    assert.equal(c['http.codes.503'], undefined, 'a retried answer is not the request answer');
    assert.equal(c['load.retried.503'], 1);
    assert.equal(c['plugins.metrics-by-endpoint.POST /bookings.codes.503'], 1);
    assert.equal(c['plugins.metrics-by-endpoint.POST /bookings.codes.201'], 1);
    assert.equal(c['bookings.created'], 1);
    const rows = historyOf(history);
    assert.deepEqual(
      rows.map((r) => [r.op, r.status, r.attempt, r.bookingId, r.code]),
      [
        ['book', 503, 1, null, 'service_unavailable'],
        ['book', 201, 2, 'b-1', null]
      ]
    );
    assert.equal(rows[0].key, net.sent[0].headers['Idempotency-Key']);
  });

  test('a timeout, a refused connection, a 502, a 504 and a 409 in progress are all resent', async (t) => {
    const { proc, d, history } = setUp(t);
    const net = fakeNetwork(proc, [
      timeoutError(),
      refused(),
      answer(502, { code: 'bad_gateway' }),
      answer(504, { code: 'gateway_timeout' }),
      answer(409, problem('idempotency_in_progress'), { 'retry-after': '1' }),
      answer(201, BOOKED, { 'idempotent-replayed': 'true' })
    ]);
    await run(proc.sendBooking, d.context, d.events);

    assert.equal(net.sent.length, 6);
    assert.equal(new Set(net.sent.map((s) => s.headers['Idempotency-Key'])).size, 1);
    const c = d.events.counters();
    assert.equal(c['bookings.created'], 1, 'the replay after lost answers acknowledges the booking');
    assert.equal(c['bookings.recovered'], 1);
    assert.equal(c['load.retried.ETIMEDOUT'], 1);
    assert.equal(c['load.retried.ECONNREFUSED'], 1);
    assert.equal(Object.keys(c).filter((k) => k.startsWith('errors.')).length, 0);
    assert.deepEqual(
      historyOf(history).map((r) => r.error || r.status),
      ['ETIMEDOUT', 'ECONNREFUSED', 502, 504, 409, 201]
    );
    assert.ok(net.waits.every((ms) => ms >= 0 && ms <= 5000));
  });

  test('resending is bounded by maxAttempts; the last answer is the one counted', async (t) => {
    const { proc, d } = setUp(t);
    d.context.vars.maxAttempts = 3;
    t.mock.method(console, 'error', () => {});
    const net = fakeNetwork(proc, [answer(503, problem('service_unavailable', { status: 503 }))]);
    await run(proc.sendBooking, d.context, d.events);

    assert.equal(net.sent.length, 3);
    const c = d.events.counters();
    assert.equal(c['http.codes.503'], 1);
    assert.equal(c['load.retried.503'], 2);
    assert.equal(c['bookings.unexpected'], 1);
  });

  test('an answer that is final is never resent: 201, 409 full, 422, 429', async (t) => {
    for (const final of [
      answer(201, BOOKED),
      answer(409, problem('capacity_exceeded', { alternatives: [] })),
      answer(422, { code: 'validation_error' }),
      answer(429, problem('rate_limited'), { 'retry-after': '1' })
    ]) {
      const { proc, d } = setUp(t);
      t.mock.method(console, 'error', () => {});
      const net = fakeNetwork(proc, [final, answer(500, {})]);
      t.mock.timers.enable({ apis: ['setTimeout'] });
      const sent = run(proc.sendBooking, d.context, d.events);
      for (let i = 0; i < 60; i += 1) {
        await Promise.resolve();
        t.mock.timers.tick(100);
      }
      await sent;
      t.mock.timers.reset();
      assert.equal(net.sent.length, 1, `status ${final.status}`);
    }
  });

  test('unanswered after the last attempt: a transport error as Artillery counts it', async (t) => {
    const { proc, d, history } = setUp(t);
    d.context.vars.maxAttempts = 2;
    fakeNetwork(proc, [refused()]);
    await run(proc.sendBooking, d.context, d.events);

    const c = d.events.counters();
    assert.equal(c['errors.ECONNREFUSED'], 1);
    assert.equal(c['http.responses'], undefined);
    assert.equal(c['bookings.created'], undefined);
    assert.equal(historyOf(history).length, 2);
  });

  test('a diner cancels a booking it made and resends the cancel whose answer was lost', async (t) => {
    const { proc, d, history } = setUp(t);
    fakeNetwork(proc, [answer(201, BOOKED)]);
    await run(proc.sendBooking, d.context, d.events);
    assert.equal(d.context.vars.bookingId, 'b-1');

    randomSequence(t, 0.01); // below cancelRatio
    const net = fakeNetwork(proc, [timeoutError(), answer(200, { booking: { id: 'b-1', status: 'cancelled' } })]);
    await run(proc.followUp, d.context, d.events);

    assert.deepEqual(
      net.sent.map((s) => [s.method, s.url]),
      [
        ['DELETE', 'http://127.0.0.1:9/bookings/b-1'],
        ['DELETE', 'http://127.0.0.1:9/bookings/b-1']
      ]
    );
    assert.equal(d.events.counters()['bookings.cancelled'], 1);
    assert.equal(d.events.counters()['plugins.metrics-by-endpoint.DELETE /bookings/{id}.codes.200'], 1);
    assert.deepEqual(
      historyOf(history)
        .filter((r) => r.op === 'cancel')
        .map((r) => [r.bookingId, r.status, r.error]),
      [
        ['b-1', null, 'ETIMEDOUT'],
        ['b-1', 200, null]
      ]
    );
    assert.equal(d.context.vars.bookingId, null, 'a cancelled booking is not cancelled twice');
  });

  test('some diners read their booking back; most do neither; a resent foreign key is never cancelled', async (t) => {
    const { proc, d, history } = setUp(t);
    fakeNetwork(proc, [answer(201, BOOKED)]);
    await run(proc.sendBooking, d.context, d.events);
    randomSequence(t, 0.15); // between cancelRatio and cancelRatio + readRatio
    const net = fakeNetwork(proc, [answer(200, BOOKED)]);
    await run(proc.followUp, d.context, d.events);
    assert.deepEqual(net.sent.map((s) => s.method), ['GET']);
    assert.equal(d.events.counters()['bookings.read'], 1);
    assert.equal(d.events.counters()['plugins.metrics-by-endpoint.GET /bookings/{id}.codes.200'], 1);

    randomSequence(t, 0.9);
    const quiet = fakeNetwork(proc, [answer(200, BOOKED)]);
    await run(proc.followUp, d.context, d.events);
    assert.equal(quiet.sent.length, 0);

    d.context.vars.bookingId = null; // what recordOutcome leaves for another diner's key
    randomSequence(t, 0.01);
    await run(proc.followUp, d.context, d.events);
    assert.equal(quiet.sent.length, 0);
    assert.equal(historyOf(history).filter((r) => r.op === 'read').length, 1);
  });

  test('availability is resent on a 503 too, and its answer read as before; it is not in the history', async (t) => {
    const { proc, d, history } = setUp(t);
    const net = fakeNetwork(proc, [
      answer(503, problem('service_unavailable', { status: 503 }), { 'retry-after': '1' }),
      answer(200, { slots: [{ time: '18:00', remainingCovers: 2 }, { time: '18:15', remainingCovers: 0 }] })
    ]);
    await run(proc.sendAvailability, d.context, d.events);

    assert.equal(net.sent.length, 2);
    assert.match(net.sent[0].url, /\/restaurants\/[0-9a-f-]+\/availability\?date=2031-03-1[01]$/);
    assert.deepEqual(d.context.vars.roomyTimes, ['18:00']);
    assert.equal(d.events.counters()['plugins.metrics-by-endpoint.GET availability.codes.200'], 1);
    assert.equal(historyOf(history).length, 0);
  });
});
