// The course's k6 run, shaped for `scripts/autoscale-demo.sh`: ramp up,
// hold, ramp down (the demo then watches the idle group shrink). Each user lists todos,
// checks "status was 200", and thinks for SLEEP seconds.
//   k6 run -e TARGET=http://127.0.0.1:8090 -e VUS=60 -e DURATION=20s bench/k6/autoscale.js
// TARGET: base URL; VUS: users at the plateau; DURATION: one stage
// (ramp up 1x, hold 3x, ramp down 1x); SLEEP: think time.
import http from 'k6/http';
import { check, sleep } from 'k6';

const TARGET = __ENV.TARGET || 'http://127.0.0.1:8090';
const VUS = parseInt(__ENV.VUS || '60');
const DURATION = __ENV.DURATION || '20s';
const SLEEP = parseFloat(__ENV.SLEEP || '0.2');
const seconds = parseInt(DURATION);

export const options = {
  stages: [
    { duration: DURATION, target: VUS },
    { duration: `${seconds * 3}s`, target: VUS },
    { duration: DURATION, target: 0 },
  ],
  summaryTrendStats: ['avg', 'med', 'p(95)', 'p(99)', 'max'],
};

export function setup() {
  console.log(`autoscale.js: TARGET=${TARGET} VUS=${VUS} DURATION=${DURATION} SLEEP=${SLEEP}`);
}

export default function () {
  const res = http.get(`${TARGET}/api/v1/todos`);
  check(res, { 'status was 200': (r) => r.status == 200 });
  sleep(SLEEP);
}
