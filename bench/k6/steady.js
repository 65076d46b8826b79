// Constant arrival rate, for latency: RATE requests per second for DURATION.
//   k6 run -e TARGET=http://127.0.0.1:8080 -e RATE=2000 -e DURATION=15s bench/k6/steady.js
import http from 'k6/http';
import { check } from 'k6';

const TARGET = __ENV.TARGET || 'http://127.0.0.1:8080';

export const options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: parseInt(__ENV.RATE || '2000'),
      timeUnit: '1s',
      duration: __ENV.DURATION || '15s',
      preAllocatedVUs: parseInt(__ENV.VUS || '100'),
      maxVUs: parseInt(__ENV.MAX_VUS || '400'),
    },
  },
  summaryTrendStats: ['avg', 'min', 'med', 'max', 'p(95)', 'p(99)'],
};

export default function () {
  const res = http.get(`${TARGET}/api/v1/todos`);
  check(res, { 'status was 200': (r) => r.status == 200 });
}
