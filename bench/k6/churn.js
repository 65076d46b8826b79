// Steady load while bench/k6/churn.py rewrites the targets file and kills a
// backend: the failed checks are the number users look at.
//   k6 run -e TARGET=http://127.0.0.1:8080 -e RATE=500 -e DURATION=30s bench/k6/churn.js
// TARGET: base URL; RATE: requests per second; DURATION: how long;
// VUS: virtual users allocated up front (up to 4x that if needed).
import http from 'k6/http';
import { check } from 'k6';

const TARGET = __ENV.TARGET || 'http://127.0.0.1:8080';
const RATE = parseInt(__ENV.RATE || '500');
const DURATION = __ENV.DURATION || '30s';
const VUS = parseInt(__ENV.VUS || '50');

export const options = {
  scenarios: {
    churn: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: DURATION,
      preAllocatedVUs: VUS,
      maxVUs: VUS * 4,
    },
  },
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  console.log(`churn.js: TARGET=${TARGET} RATE=${RATE}/s DURATION=${DURATION} VUS=${VUS} (max ${VUS * 4})`);
}

export default function () {
  const res = http.get(`${TARGET}/api/v1/todos`);
  check(res, { 'status was 200': (r) => r.status == 200 });
}
