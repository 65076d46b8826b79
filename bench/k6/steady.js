// Constant arrival rate, for latency: RATE requests per second for DURATION.
//   k6 run -e TARGET=http://127.0.0.1:8080 -e RATE=2000 -e DURATION=15s bench/k6/steady.js
// TARGET: base URL; RATE: requests per second; DURATION: how long;
// VUS: virtual users allocated up front (up to 4x that if needed).
import http from 'k6/http';
import { check } from 'k6';

const TARGET = __ENV.TARGET || 'http://127.0.0.1:8080';
const RATE = parseInt(__ENV.RATE || '2000');
const DURATION = __ENV.DURATION || '15s';
const VUS = parseInt(__ENV.VUS || '100');

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: VUS * 4,
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(95)', 'p(99)'],
};

export function setup() {
  console.log(`steady.js: TARGET=${TARGET} RATE=${RATE}/s DURATION=${DURATION} VUS=${VUS} (max ${VUS * 4})`);
}

export default function () {
  const res = http.get(`${TARGET}/api/v1/todos`);
  check(res, { 'status was 200': (r) => r.status == 200 });
}
