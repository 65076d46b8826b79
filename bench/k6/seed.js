// The course practical's k6 scenario: ramping virtual users listing todos,
// checking "status was 200". Scaled by environment variables so it fits a
// 2-core machine and a big one:
//   k6 run -e TARGET=http://127.0.0.1:8080 -e VUS=100 -e DURATION=20s bench/k6/seed.js
// TARGET: base URL; VUS: users in the first stage (twice that in the second);
// DURATION: the length of each of the three stages.
import http from 'k6/http';
import { check, sleep } from 'k6';

const TARGET = __ENV.TARGET || 'http://127.0.0.1:8080';
const VUS = parseInt(__ENV.VUS || '100');
const DURATION = __ENV.DURATION || '20s';

export const options = {
  stages: [
    { duration: DURATION, target: VUS },
    { duration: DURATION, target: VUS * 2 },
    { duration: DURATION, target: 0 },
  ],
};

export function setup() {
  console.log(`seed.js: TARGET=${TARGET} VUS=${VUS} (then ${VUS * 2}) DURATION=${DURATION} per stage`);
}

export default function () {
  const res = http.get(`${TARGET}/api/v1/todos`);
  check(res, { 'status was 200': (r) => r.status == 200 });
  sleep(1);
}
